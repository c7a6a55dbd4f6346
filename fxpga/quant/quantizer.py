"""Dynamic fixed-point quantization after Qiu et al. (FPGA 2016), and the static baseline.

qiu: per layer ``fl_w = argmin_fl Σ|W − Q(W; bits, fl)|``; then, greedily in topological
order with every earlier layer already quantized, ``fl_out = argmin_fl Σ|y_float − Q(y_fixed)|``
over the calibration set (the input's fl the same way). ``y`` is compared after a directly
following ReLU, where it is consumed. static: one fl for all weights and one for all
activations, each minimising the summed error over the whole float network. dynamic (the
default): qiu's search with every option on (``SCHEMES``): unsigned formats where tensors
cannot be negative, an fl per output channel for the weights, biases corrected for the mean
error, each activation's fl scored by the error it leaves at the network's output
(``Search``). ``rounding="gptq"`` rounds the weights against the layer's output error
(``rounding``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import FxpgaError
from ..limits import MAX_CALIB_VALUES, MAX_TENSOR_ELEMENTS
from ..progress import bar as progress_bar
from . import golden, ir
from .qformat import (
    QFormat,
    check_bits,
    clip_bounds,
    dequantize,
    fl_fit,
    quantize,
    requantize_channels,
    signed_width,
)
from .qmodel import QLayer, QModel
from .rounding import round_weights

SEARCH_BELOW = 2  # candidates: fl_fit − SEARCH_BELOW … fl_fit + bits (more saturation)
# a layer's per-channel weight fl lie within this many of its smallest; a channel of near-zero
# weights (a dead one) gets the finest of them, not an fl of 100
MAX_CHANNEL_FL_SPREAD = 8
MAX_FL = 64  # |fl| of a format a --config (or a .fxq) may give


@dataclass(frozen=True)
class Options:
    """What a scheme does beyond Qiu et al.'s search (``quantize_model``'s arguments)."""

    unsigned: bool = False
    bias_correction: bool = False
    per_channel: bool = False
    objective: str = "l1"
    rounding: str = "nearest"


# the schemes and their options; an argument given to quantize_model wins
SCHEMES = {
    "dynamic": Options(unsigned=True, bias_correction=True, per_channel=True, objective="output"),
    "qiu": Options(),
    "static": Options(),
}


@dataclass
class Widths:
    """Word widths: activations everywhere, weights per layer kind (the paper's "8/4")."""

    act: int = 8
    conv_w: int | None = None
    fc_w: int | None = None

    def __post_init__(self):
        self.act = check_bits(self.act, "--bits")
        self.conv_w = check_bits(
            self.conv_w if self.conv_w is not None else self.act, "--conv-bits"
        )
        self.fc_w = check_bits(self.fc_w if self.fc_w is not None else self.act, "--fc-bits")

    def weight_bits(self, node: ir.Node) -> int:
        return self.conv_w if isinstance(node, ir.Conv) else self.fc_w


@dataclass
class Override:
    """A per-tensor format from ``--config``: ``bits``, optionally a fixed ``fl`` and whether
    it is signed (an activation's; a whole format without "signed" is; None, for bits
    alone: as the quantizer's options say)."""

    bits: int | None = None
    fl: int | None = None
    signed: bool | None = None


@dataclass
class Config:
    """Hand-edited per-layer formats: ``{"input": {...}, "layers": {name: {"weight": {...},
    "output": {...}}}}`` where each format is ``{"bits": B}`` or ``{"bits": B, "fl": F}``."""

    input: Override | None = None
    layers: dict[str, dict[str, Override]] = field(default_factory=dict)
    source: str = "config"

    @classmethod
    def from_json(cls, obj, where: str) -> Config:
        if not isinstance(obj, dict):
            raise FxpgaError(f"{where}: expected a JSON object at the top level")
        unknown = set(obj) - {
            "input",
            "layers",
            "schema",
            "schema_version",
            "fxpga",
            "output",
            "host_tail",
            "max_acc_bits",
            "provenance",
            "scheme",
            "accuracy",
            "tensors",
        }
        if unknown:
            raise FxpgaError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        inp = obj.get("input")
        cfg = cls(source=where)
        if inp is not None:
            cfg.input = _override(
                inp.get("format", inp) if isinstance(inp, dict) else inp, f"{where}: input"
            )
        layers = obj.get("layers", {})
        if isinstance(layers, list):  # an .fxq's layer list
            layers = {la.get("name"): la for la in layers if isinstance(la, dict)}
        if not isinstance(layers, dict):
            raise FxpgaError(f"{where}: 'layers' must be an object keyed by layer name")
        for name, spec in layers.items():
            if not isinstance(spec, dict):
                raise FxpgaError(f"{where}: layer '{name}': expected an object")
            entry = {}
            for key in ("weight", "output"):
                if spec.get(key) is not None:
                    entry[key] = _override(spec[key], f"{where}: layer '{name}' {key}")
            bad = set(spec) - {
                "weight",
                "output",
                "name",
                "op",
                "in_shape",
                "out_shape",
                "attrs",
                "input",
                "shift",
                "acc_bits",
                "acc_range",
                "stats",
                "source",
                "in_range",
                "out_range",
                "format",
                "inputs",
                "input_formats",
                "in_ranges",
            }
            if bad:
                raise FxpgaError(
                    f"{where}: layer '{name}': unknown key(s) "
                    f"{', '.join(sorted(bad))} (expected 'weight', 'output')"
                )
            cfg.layers[name] = entry
        return cfg

    def check(self, graph: ir.Graph):
        where = self.source
        names = {n.name: n for n in graph.nodes}
        for name, entry in self.layers.items():
            if name not in names:
                raise FxpgaError(
                    f"{where}: unknown layer '{name}' (layers: "
                    f"{', '.join(n.name for n in graph.weighted())})"
                )
            node = names[name]
            if "weight" in entry and not node.has_weights:
                raise FxpgaError(f"{where}: layer '{name}' is a {node.op}, which has no weights")
            if entry and not (node.has_weights or node.arity is None):
                raise FxpgaError(
                    f"{where}: layer '{name}' is a {node.op}, which keeps its "
                    f"input's format; only conv/linear/add/concat formats can be set"
                )


def _override(spec, where: str) -> Override:
    if not isinstance(spec, dict):
        raise FxpgaError(f'{where}: expected {{"bits": B, "fl": F}}, got {spec!r}')
    bad = set(spec) - {"bits", "fl", "signed"}
    if bad:
        raise FxpgaError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
    signed = spec.get("signed")
    if signed is not None and not isinstance(signed, bool):
        raise FxpgaError(f"{where}: signed must be true or false, not {signed!r}")
    if signed is False and where.endswith(" weight"):
        raise FxpgaError(f"{where}: weights are signed")
    bits = spec.get("bits")
    if bits is not None:
        check_bits(bits, where)
    fl = spec.get("fl")
    if isinstance(fl, list) and where.endswith(" weight"):  # one per output channel
        if not fl or len(fl) > MAX_TENSOR_ELEMENTS or bits is None:
            raise FxpgaError(
                f"{where}: a per-channel fl needs bits and 1..{MAX_TENSOR_ELEMENTS} values"
            )
        for k, f in enumerate(fl):
            if isinstance(f, bool) or not isinstance(f, int) or abs(f) > MAX_FL:
                raise FxpgaError(
                    f"{where}: fl[{k}] must be an integer in -{MAX_FL}..{MAX_FL}, not {f!r}"
                )
        return Override(bits, tuple(fl), signed)
    if fl is not None and (isinstance(fl, bool) or not isinstance(fl, int)):
        raise FxpgaError(f"{where}: fl must be an integer, not {fl!r}")
    if fl is not None and bits is None:
        raise FxpgaError(f"{where}: fl given without bits")
    if fl is not None and abs(fl) > MAX_FL:
        raise FxpgaError(f"{where}: fl={fl} is outside -{MAX_FL}..{MAX_FL}")
    if fl is not None and signed is None:  # a whole format, as a .fxq writes it: signed
        signed = True
    return Override(bits, fl, signed)


# Σ|error| (Qiu et al.'s) or Σ error² of the tensor itself; or the squared error it leaves
# at the network's output (``Search``)
OBJECTIVES = ("l1", "l2", "output")
OUTPUT_SAMPLES = 128  # calibration inputs the output objective runs the later layers on
# how far the output objective may move an fl from the tensor's own l2 choice: the later
# layers it scores with run in float, without the bias correction and the saturation they
# get when they are quantized, so a format that saturates more than its own l2 choice by
# several steps can look better there than it is
MAX_WALK = 1
# integer weights: each rounded to nearest, or chosen against the layer's output error
ROUNDINGS = ("nearest", "gptq")


def total_error(d: np.ndarray, objective: str = "l1") -> float:
    """The search's objective over the differences ``d``: Σ|d| or Σ d²."""
    return float((d * d).sum() if objective == "l2" else np.abs(d).sum())


def quantization_error(x: np.ndarray, fmt: QFormat, objective: str = "l1") -> float:
    """The ``objective`` error of ``x`` quantized to ``fmt``."""
    return total_error(x - dequantize(quantize(x, fmt), fmt.fl), objective)


def candidates(x: np.ndarray, bits: int, signed: bool = True) -> range:
    f = fl_fit(float(np.max(np.abs(x))) if x.size else 0.0, bits, signed)
    return range(f - SEARCH_BELOW, f + bits + 1)


def choose_fl(
    given: int | None, static: int | None, err_of, x: np.ndarray, bits: int, signed: bool = True
) -> int:
    """A tensor's fl: as ``--config`` gives it, else the static scheme's, else the greedy
    argmin of ``err_of`` over the candidates for values like ``x``."""
    if given is not None:
        return given
    if static is not None:
        return static
    return best_fl(err_of, candidates(x, bits, signed))


class Search:
    """How the greedy search picks an activation's fl (the input's, or a conv, linear, add or
    concat output's), given the integers ``out_of(fl)`` each candidate gives.

    ``l1``/``l2``: the fl whose values are closest to the float tensor (after a ReLU that
    alone reads it). ``output``: from the l2 choice, the search walks one fl at a time, finer
    and then coarser, at most ``MAX_WALK`` steps, while the squared error at the network's
    output falls, that error taken
    with the later layers in float on this tensor and on the live ones already quantized, on
    ``OUTPUT_SAMPLES`` of the calibration inputs: an error is weighed by what it does
    downstream. Ties go to the fl nearer the l2 choice."""

    def __init__(self, graph, ref, x, objective, vals, fmts):
        self.graph, self.ref, self.x, self.objective = graph, ref, x, objective
        self.vals, self.fmts = vals, fmts  # the quantizer's live integers and formats
        self.before_relu = read_by_relu_only(graph)
        # the objective of a tensor's own error (the weights', and where the walk starts)
        self.own = "l2" if objective == "output" else objective
        if objective == "output":
            self.idx = np.unique(
                np.linspace(0, len(x) - 1, min(len(x), OUTPUT_SAMPLES)).astype(int)
            )
            self.want = ref[graph.nodes[-1].name][self.idx]
            # tensor → the index of its last reader
            self.last = {t: k for k, ts in graph.last_use().items() for t in ts}

    def target(self, name: str) -> np.ndarray:
        """The float value a tensor is compared with: its own, after a ReLU that alone
        reads it."""
        if name == ir.INPUT:
            return self.x
        y = self.ref[name]
        return np.maximum(y, 0) if name in self.before_relu else y

    def difference(self, name: str, q: np.ndarray, fl: int) -> np.ndarray:
        if name in self.before_relu:
            q = np.maximum(q, 0)
        return self.target(name) - np.ldexp(q.astype(np.float64), -fl)

    def choose(self, k, name, given, static, out_of, bits, signed) -> int:
        """The fl of tensor ``name``, made by node ``k`` (−1: the input): as ``--config``
        gives it, else the static scheme's, else the search's."""
        if given is not None:
            return given
        if static is not None:
            return static
        cands = candidates(self.target(name), bits, signed)
        start = best_fl(
            lambda fl: total_error(self.difference(name, out_of(fl), fl), self.own), cands
        )
        if self.objective != "output":
            return start
        scores = {start: self.at_output(k, name, out_of(start), start)}
        for step in (1, -1):  # walk from the l2 choice while the output error falls
            fl = start + step
            while fl in cands and abs(fl - start) <= MAX_WALK:
                scores[fl] = self.at_output(k, name, out_of(fl), fl)
                if scores[fl] >= scores[fl - step]:
                    break
                fl += step
            if min(scores, key=lambda f: (scores[f], abs(f - start), f)) > start:
                break  # it fell towards finer formats: no need to look coarser
        return min(scores, key=lambda f: (scores[f], abs(f - start), f))

    def at_output(self, k: int, name: str, q: np.ndarray, fl: int) -> float:
        """The squared error at the network's output with tensor ``name`` as ``q · 2^-fl``."""
        import torch

        def real(v, f):
            return torch.from_numpy(np.ldexp(v[self.idx].astype(np.float64), -f))

        # the live tensors a later node reads (the quantizer frees the others)
        env = {
            j: real(v, self.fmts[j].fl)
            for j, v in self.vals.items()
            if j != name and self.last.get(j, -1) > k
        }
        env[name] = real(q, fl)
        return total_error(self.graph.forward_from(k + 1, env) - self.want, "l2")


def best_fl(err_of, cands) -> int:
    """argmin over candidate fl; ties go to the smaller fl (less saturation)."""
    best, best_err = None, math.inf
    for fl in cands:
        e = err_of(fl)
        if e < best_err:
            best, best_err = fl, e
    return best


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((ref - approx) ** 2))
    sig = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


def _acc_bound(w: np.ndarray, b: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Bound Σ x·w + b over x in [lo, hi] (0 included for padding), per output, then overall."""
    w = w.reshape(w.shape[0], -1).astype(object)
    lo_t = np.minimum(np.minimum(w * lo, w * hi), 0).sum(axis=1) + b.astype(object)
    hi_t = np.maximum(np.maximum(w * lo, w * hi), 0).sum(axis=1) + b.astype(object)
    return int(min(lo_t.min(), 0)), int(max(hi_t.max(), 0))


def quantize_bias(b: np.ndarray, fl: int, where: str) -> np.ndarray:
    q = np.floor(np.ldexp(b, fl) + 0.5)
    if q.size and np.max(np.abs(q)) >= 2.0**63:
        raise FxpgaError(
            f"{where}: bias at the accumulator scale (fl={fl}) needs more than 64 "
            f"bits; lower the input or weight fl"
        )
    return q.astype(np.int64)


def read_by_relu_only(graph: ir.Graph) -> set[str]:
    """Tensors whose only reader is a ReLU: their error is measured after it."""
    return {
        name
        for name, rs in graph.consumers().items()
        if name != ir.INPUT and len(rs) == 1 and isinstance(rs[0], ir.ReLU)
    }


def unsigned_outputs(graph: ir.Graph) -> set[str]:
    """The conv, linear, add and concat outputs that may be stored unsigned: each is read only
    by a ReLU, or by a clip whose lower bound is at least 0 (ReLU6), which would make it
    non-negative anyway; the saturation to ``[0, 2^bits − 1]`` does the ReLU's work."""
    consumers = graph.consumers()
    out = set()
    for n in graph.nodes:
        rs = consumers.get(n.name, [])
        if not (n.has_weights or isinstance(n, ir.Add | ir.Concat)) or len(rs) != 1:
            continue
        r = rs[0]
        if isinstance(r, ir.ReLU) or (isinstance(r, ir.Clip) and r.lo is not None and r.lo >= 0):
            out.add(n.name)
    return out


def _passthrough(node: ir.Node, fmt: QFormat, r: tuple[int, int]) -> QLayer:
    """A layer that keeps its input's format, with the integer range it can output."""
    la = QLayer(node, fmt, fmt, r, r)
    if isinstance(node, ir.ReLU):
        la.out_range = (max(r[0], 0), max(r[1], 0))
    elif isinstance(node, ir.Clip):
        qlo, qhi = clip_bounds(fmt, node.lo, node.hi)
        if qlo > qhi:
            raise FxpgaError(
                f"{node.where()}: no value of {fmt!r} lies in [{node.lo}, {node.hi}] (set a "
                f"finer format for the layer before it)"
            )
        la.out_range = tuple(min(max(v, qlo), qhi) for v in r)
    elif (isinstance(node, ir.Pad) and any(node.pads)) or (
        isinstance(node, ir.AvgPool) and any(node.padding)
    ):  # zeros come in: a Pad, or an average pool that counts its padding
        la.out_range = (min(r[0], 0), max(r[1], 0))
    return la


def _merge_range(node: ir.Node, ranges: list[tuple[int, int]], fmt: QFormat) -> tuple[int, int]:
    """The output range of an add (the saturated sum of the aligned ranges) or a concat."""
    if isinstance(node, ir.Concat):
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    return max(sum(r[0] for r in ranges), fmt.qmin), min(sum(r[1] for r in ranges), fmt.qmax)


def quantize_model(
    graph: ir.Graph,
    x_calib: np.ndarray,
    widths: Widths | None = None,
    scheme: str = "dynamic",
    config: Config | None = None,
    progress: bool = False,
    provenance: dict | None = None,
    unsigned: bool | None = None,
    input_unsigned: bool = False,
    bias_correction: bool | None = None,
    per_channel: bool | None = None,
    objective: str | None = None,
    rounding: str | None = None,
) -> QModel:
    """Choose every format and build the integer model. See the module docstring.

    ``scheme``: ``dynamic`` (the default), ``qiu`` or ``static``; the options left ``None``
    are the scheme's (``SCHEMES``). ``unsigned``: the outputs ``unsigned_outputs`` names get
    unsigned formats (every bit of the word for values that cannot be negative).
    ``input_unsigned``: the input too (the data is declared non-negative; negative inputs
    saturate to 0). ``bias_correction``: each conv/linear bias corrected for the mean error
    its channel has on the calibration set (``_quantize_weighted``). ``per_channel``: each
    output channel's weights get their own fl, chosen as a layer's is, where neither
    ``--config`` nor the static scheme fixes it. ``objective``: what the greedy search
    minimises: ``l1`` (Σ|error|, Qiu et al.'s) or ``l2`` (Σ error², the squared error), for
    weights and activations alike, or ``output`` (``Search``; the weights' is l2).
    ``rounding``: ``nearest``, or ``gptq``, each layer's integer weights chosen against its
    output error on its quantized calibration input (``rounding.round_weights``)."""
    widths = widths or Widths()
    if scheme not in SCHEMES:
        raise FxpgaError(f"unknown scheme '{scheme}' ({', '.join(SCHEMES)})")
    preset = SCHEMES[scheme]
    unsigned = preset.unsigned if unsigned is None else unsigned
    bias_correction = preset.bias_correction if bias_correction is None else bias_correction
    per_channel = preset.per_channel if per_channel is None else per_channel
    objective = preset.objective if objective is None else objective
    rounding = preset.rounding if rounding is None else rounding
    if rounding not in ROUNDINGS:
        raise FxpgaError(f"unknown rounding '{rounding}' ({' or '.join(ROUNDINGS)})")
    if objective not in OBJECTIVES:
        raise FxpgaError(f"unknown objective '{objective}' ({' or '.join(OBJECTIVES)})")
    config = config or Config()
    x_calib = np.asarray(x_calib)
    if len(x_calib) == 0:
        raise FxpgaError("the calibration set is empty")
    if tuple(x_calib.shape[1:]) != graph.input_shape:
        raise FxpgaError(
            f"calibration samples have shape {tuple(x_calib.shape[1:])}, the model "
            f"expects {graph.input_shape}"
        )
    # the search keeps every layer's float output on the whole set: bound it before
    per_image = math.prod(graph.input_shape) + sum(math.prod(n.out_shape) for n in graph.nodes)
    if len(x_calib) * per_image > MAX_CALIB_VALUES:
        raise FxpgaError(
            f"calibrating on {len(x_calib):,} images keeps {len(x_calib) * per_image:,} "
            f"activations ({per_image:,} per image), more than {MAX_CALIB_VALUES:,} (2 GiB of "
            f"float64): use at most {MAX_CALIB_VALUES // per_image:,} images (--calib)"
        )
    x_calib = np.asarray(x_calib, dtype=np.float64)
    config.check(graph)
    ref = graph.float_forward(x_calib, keep=True)
    # every live tensor's integers, format and integer range, by name
    vals, fmts, ranges = {}, {}, {}
    search = Search(graph, ref, x_calib, objective, vals, fmts)
    target, before_relu = search.target, search.before_relu

    static_w = static_a = None
    if scheme == "static":
        static_w, static_a = _static_fls(graph, x_calib, widths, target)

    # input format
    ov = config.input or Override()
    in_bits = ov.bits or widths.act
    in_signed = not input_unsigned if ov.signed is None else ov.signed
    in_fl = search.choose(
        -1,
        ir.INPUT,
        ov.fl,
        static_a,
        lambda fl: quantize(x_calib, QFormat(in_bits, fl, in_signed)),
        in_bits,
        in_signed,
    )
    input_fmt = QFormat(in_bits, in_fl, in_signed)
    nonneg = unsigned_outputs(graph) if unsigned else set()
    vals[ir.INPUT] = quantize(x_calib, input_fmt)
    fmts[ir.INPUT] = input_fmt
    ranges[ir.INPUT] = (input_fmt.qmin, input_fmt.qmax)
    last_use = graph.last_use()

    layers: list[QLayer] = []
    bar = progress_bar(list(enumerate(graph.nodes)), desc=f"{scheme} search", enabled=progress)
    for k, node in bar:
        bar.set_postfix_str(node.name)
        entry = config.layers.get(node.name, {})
        ins = node.inputs
        cur, cur_fmt, cur_range = vals[ins[0]], fmts[ins[0]], ranges[ins[0]]
        if isinstance(node, ir.Conv | ir.Linear):
            la, out = _quantize_weighted(
                node,
                cur,
                cur_fmt,
                cur_range,
                entry,
                widths,
                static_w,
                lambda given, out_of, bits, signed, k=k, n=node.name: search.choose(
                    k, n, given, static_a, out_of, bits, signed
                ),
                target,
                before_relu,
                node.name not in nonneg,
                ref[node.name] if bias_correction else None,
                per_channel and scheme != "static",
                search.own,
                rounding,
            )
        elif isinstance(node, ir.Add | ir.Concat):
            in_fmts = tuple(fmts[i] for i in ins)
            xs = [vals[i] for i in ins]
            oov = entry.get("output", Override())
            obits = oov.bits or widths.act
            osigned = node.name not in nonneg if oov.signed is None else oov.signed
            probe = QLayer(node, cur_fmt, cur_fmt, cur_range, cur_range, in_fmts=in_fmts)

            def merged(fl, probe=probe, xs=xs, obits=obits, osigned=osigned):
                probe.out_fmt = QFormat(obits, fl, osigned)
                return golden.step(probe, *xs)

            ofl = search.choose(k, node.name, oov.fl, static_a, merged, obits, osigned)
            out_fmt = QFormat(obits, ofl, osigned)
            out = merged(ofl)
            in_ranges = tuple(ranges[i] for i in ins)
            to = out_fmt if isinstance(node, ir.Concat) else golden.add_operand_fmt(out_fmt)
            aligned = [
                tuple(int(v) for v in golden.align(np.array(r), f, to))
                for r, f in zip(in_ranges, in_fmts, strict=True)
            ]
            la = QLayer(
                node,
                cur_fmt,
                out_fmt,
                cur_range,
                _merge_range(node, aligned, out_fmt),
                in_fmts=in_fmts,
                in_ranges=in_ranges,
            )
            la.stats = _out_stats(node.name, out, out_fmt, target, before_relu)
        else:
            la = _passthrough(node, cur_fmt, cur_range)
            out = golden.step(la, cur)
        vals[node.name], fmts[node.name], ranges[node.name] = out, la.out_fmt, la.out_range
        for j in last_use.get(k, ()):
            del vals[j]  # read by no later layer
        layers.append(la)
    return QModel(graph, input_fmt, layers, scheme=scheme, provenance=dict(provenance or {}))


def _out_stats(name, out, fmt: QFormat, target, before_relu) -> dict:
    fixed = dequantize(np.maximum(out, 0) if name in before_relu else out, fmt.fl)
    return {
        "output_sqnr_db": sqnr_db(target(name), fixed),
        "saturated_outputs_pct": saturated_pct(out, fmt),
    }


def saturated_pct(q: np.ndarray, fmt: QFormat) -> float:
    """The share of ``q`` at its format's bounds, in percent; an unsigned format's 0 is where
    a ReLU puts every negative value, so only its top counts."""
    top = q == fmt.qmax
    return float(100.0 * np.mean(top | (q == fmt.qmin) if fmt.signed else top))


def _quantize_weighted(
    node,
    cur,
    cur_fmt,
    cur_range,
    entry,
    widths,
    static_w,
    choose_out,
    target,
    before_relu,
    signed=True,
    raw=None,
    per_channel=False,
    objective="l1",
    rounding="nearest",
):
    """A conv/linear layer: its weight format, integer weights and bias, accumulator bound
    and output format (greedy, against ``target``). Returns the layer and its output.

    ``raw``, the float model's output of the layer on the calibration set, asks for bias
    correction: each channel's integer bias moves by the rounded mean, over the set, of the
    float output minus the exact accumulator (on the quantized input the layer really gets),
    so that the mean error of each channel is at most half a step of the accumulator.

    ``per_channel``: each output channel's weight fl is chosen on that channel's weights
    alone (the same argmin), at most ``MAX_CHANNEL_FL_SPREAD`` above the smallest, unless
    ``--config`` fixes the layer's. ``choose_out(given, out_of, bits, signed)``: the output's
    fl (``Search.choose``). ``objective``: the weights' (the output objective's is l2)."""
    where = node.where()
    wov = entry.get("weight", Override())
    wbits = wov.bits or widths.weight_bits(node)

    def weight_fl(wt):
        return choose_fl(
            wov.fl,
            static_w,
            lambda fl: quantization_error(wt, QFormat(wbits, fl), objective),
            wt,
            wbits,
        )

    if isinstance(wov.fl, tuple):  # --config gives one per output channel
        if len(wov.fl) != len(node.weight):
            raise FxpgaError(
                f"{where}: the config gives {len(wov.fl)} weight fl, one per output channel "
                f"of {len(node.weight)}"
            )
        wfls = np.array(wov.fl)
    elif per_channel and wov.fl is None:
        wfls = np.array([weight_fl(wt) for wt in node.weight])
        wfls = np.minimum(wfls, wfls.min() + MAX_CHANNEL_FL_SPREAD)
    else:
        wfls = np.full(len(node.weight), weight_fl(node.weight))
    if rounding == "gptq":
        w = round_weights(node, cur, wfls, wbits)
    else:
        w = np.stack(
            [quantize(wt, QFormat(wbits, int(f))) for wt, f in zip(node.weight, wfls, strict=True)]
        )
    b = quantize_bias(node.bias, cur_fmt.fl + wfls, where)
    acc_range = _acc_bound(w, b, *cur_range)
    la = QLayer(
        node,
        cur_fmt,
        cur_fmt,
        cur_range,
        cur_range,
        w_fmt=QFormat(wbits, int(wfls.min())),
        w=w,
        b=b,
        acc_range=acc_range,
        acc_bits=signed_width(*acc_range),
        w_fls=tuple(wfls),
    )
    w_fmt = la.w_fmt
    acc = golden.accumulate(la, cur)
    acc_fl = cur_fmt.fl + la.w_fl_of  # per channel, or one for the layer
    if raw is not None:
        axes = (0, *range(2, acc.ndim))  # all but the channel axis
        per = np.reshape(acc_fl, (1, -1, *(1,) * (acc.ndim - 2)))
        delta = np.mean(raw - np.ldexp(acc.astype(np.float64), -per), axis=axes)
        fix = np.floor(np.ldexp(delta, acc_fl) + 0.5).astype(np.int64)
        if fix.any():
            la.b = b = b + fix
            acc = acc + fix.reshape(1, -1, *(1,) * (acc.ndim - 2)).astype(acc.dtype)
            la.acc_range = _acc_bound(w, b, *cur_range)
            la.acc_bits = signed_width(*la.acc_range)
    oov = entry.get("output", Override())
    obits = oov.bits or widths.act
    signed = signed if oov.signed is None else oov.signed
    ofl = choose_out(
        oov.fl, lambda fl: requantize_channels(acc, acc_fl - fl, obits, signed), obits, signed
    )
    la.out_fmt = QFormat(obits, ofl, signed)
    la.out_range = (la.out_fmt.qmin, la.out_fmt.qmax)
    out = requantize_channels(acc, la.shifts, obits, signed)
    stats = _out_stats(node.name, out, la.out_fmt, target, before_relu)
    la.stats = {
        "weight_sqnr_db": sqnr_db(node.weight, la.weight_values()),
        "output_sqnr_db": stats["output_sqnr_db"],
        "saturated_weights": int(np.sum((w == w_fmt.qmin) | (w == w_fmt.qmax))),
        "saturated_outputs_pct": stats["saturated_outputs_pct"],
    }
    return la, out


def _static_fls(graph: ir.Graph, x_calib, widths: Widths, target) -> tuple[int, int]:
    """One fl for all weights, one for all activations (input and conv/linear outputs)."""
    wl = [(n.weight, widths.weight_bits(n)) for n in graph.weighted()]
    acts = [x_calib] + [target(n.name) for n in graph.nodes if n.has_weights or n.arity is None]
    abits = widths.act

    def w_err(fl):
        return sum(quantization_error(w, QFormat(b, fl)) for w, b in wl)

    def a_err(fl):
        return sum(quantization_error(a, QFormat(abits, fl)) for a in acts)

    w_cands = range(
        min(candidates(w, b).start for w, b in wl), max(candidates(w, b).stop for w, b in wl)
    )
    a_cands = range(
        min(candidates(a, abits).start for a in acts), max(candidates(a, abits).stop for a in acts)
    )
    return best_fl(w_err, w_cands), best_fl(a_err, a_cands)


def accuracy(qm: QModel, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(golden.predict(qm, x) == y))


def output_quality(qm: QModel, x: np.ndarray) -> tuple[float, float]:
    """How close the fixed-point output is to the float model's on ``x``, for models that
    are not classifiers: (SQNR in dB, max |error|), in the output's real units."""
    want = qm.graph.float_forward(x).reshape(len(x), -1)
    got = dequantize(golden.run(qm, x).reshape(len(x), -1), qm.output_fmt.fl)
    err = float(np.sum((want - got) ** 2))
    sqnr = math.inf if err == 0 else 10 * math.log10(float(np.sum(want**2)) / err)
    return sqnr, float(np.max(np.abs(want - got)))


def float_accuracy(graph: ir.Graph, x: np.ndarray, y: np.ndarray) -> float:
    out = graph.float_forward(x)
    return float(np.mean(out.reshape(len(out), -1).argmax(axis=1) == y))
