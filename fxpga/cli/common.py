"""What the commands share: argument types, the model and dataset loaders, messages."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from .. import limits
from ..errors import FxpgaError

BOARDS = ("icebreaker", "orangecrab-25f", "ulx3s-85f")


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``fxpga quantize: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded(lo, hi, what: str = "an integer", why: str = ""):
    """An argparse type: a number in ``lo..hi``, an integer where both bounds are (else a
    float: NaN and infinities fail the bound); the bound (and ``why``) is named in the
    error."""
    integral = isinstance(lo, int) and isinstance(hi, int)
    span = f"{lo}..{hi}" if integral else f"{lo:g}..{hi:g}"
    why = f" ({why})" if why else ""

    def parse(v: str):
        try:
            x = int(v) if integral else float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} in {span}, got {v!r}{why}") from None
        if not lo <= x <= hi:  # NaN fails this too
            raise argparse.ArgumentTypeError(
                f"{what} must be in {span}, got {x if integral else v}{why}"
            )
        return x

    parse.__name__ = what  # argparse names the type in "invalid <name> value" messages
    return parse


bits = bounded(2, 32, "bits")
# the sizes the engine, the simulators and the boards take (bounds: fxpga/limits.py)
lanes = bounded(
    1,
    limits.MAX_LANES,
    "lanes",
    f"the largest board, the {limits.LARGEST_BOARD}, has {limits.BOARD_MULTIPLIERS} multipliers",
)
engine_bits = bounded(
    limits.MIN_OPERAND_BITS, limits.MAX_OPERAND_BITS, "bits", "the engine's multipliers are 18x18"
)
acc_bits = bounded(limits.MIN_ACC_BITS, limits.MAX_ACC_BITS, "accumulator bits")
images = bounded(1, limits.MAX_SAMPLES, "images")
seed = bounded(0, limits.MAX_SEED, "seed")
# --timeout: up to a day (a factory that trains its model first is slow, not stuck)
MAX_LOAD_SECONDS = 86_400
load_seconds = bounded(1, MAX_LOAD_SECONDS, "seconds")


def info(args, msg: str):
    """A progress message on stderr, unless ``--quiet``."""
    if not args.quiet:
        print(msg, file=sys.stderr)


def check_output(out: Path, suffixes: tuple[str, ...], what: str):
    """``-o``: the right suffix, not a directory, and in a directory that exists."""
    if out.suffix not in suffixes:
        raise FxpgaError(f"-o {out}: {what} must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise FxpgaError(f"-o {out}: is a directory; {what} is a file")
    if not out.parent.is_dir():
        raise FxpgaError(f"-o {out}: directory '{out.parent}' does not exist")


def sha256_of(path: str | Path) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def input_shape(v: str) -> tuple[int, ...]:
    """An argparse type: a per-sample shape ``C,H,W`` or ``F`` (the bounds are checked where
    the model is loaded)."""
    try:
        dims = tuple(int(d) for d in v.split(","))
    except ValueError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W or F (positive integers), got {v!r}")
    return dims


input_shape.__name__ = "shape"


def load_graph(
    spec: str,
    weights: str | None,
    shape: tuple[int, ...] | None = None,
    *,
    trust_pickle: bool = False,
    timeout: int | None = None,
):
    """MODEL → (nn.Module or ir.Graph, default dataset name or None, provenance dict);
    ``shape``: the per-sample input shape of an .onnx model whose input is dynamic;
    ``trust_pickle``: load a .pt2 through torch.export.load as it is (it can run code stored in
    the file); ``timeout``: seconds the loading (the user's import and factory included) may
    take."""
    from ..quant import frontend

    with frontend.time_limit(timeout, f"loading {spec}"):
        return _load_graph(spec, weights, shape, trust_pickle)


def _load_graph(spec, weights, shape, trust_pickle):
    from ..quant import frontend, onnx_import, zoo

    prov = {"model": spec}
    if shape is not None and not spec.endswith(".onnx"):
        raise FxpgaError("--input-shape applies to an .onnx model only")
    if trust_pickle and not spec.endswith(".pt2"):
        raise FxpgaError("--trust-pickle applies to a .pt2 archive only")
    if spec in zoo.HARDWARE_ONLY:
        model, ds_name = zoo.builtin(spec, weights=Path(weights) if weights else None)
        prov["weights"] = {"seeded": zoo.SEEDED_SEED, "sha256": zoo.SEEDED_SHA256[spec]}
        return model, ds_name, prov
    if spec in zoo.BUILTIN:
        if weights:
            model, ds_name = zoo.builtin(spec, weights=Path(weights))
            prov["weights"] = {"file": weights, "sha256": sha256_of(weights)}
        else:
            model, ds_name = zoo.builtin(spec)
            prov["weights"] = {"shipped": f"{spec}.npz", "sha256": zoo.manifest(spec)["sha256"]}
        return model, ds_name, prov
    if spec.endswith(".pt2"):
        if weights:
            raise FxpgaError("--weights does not apply to a .pt2 archive (it holds its weights)")
        p = Path(spec)
        if not p.is_file():
            raise FxpgaError(f"{spec}: no such file")
        graph = frontend.from_export(p, trust_pickle=trust_pickle)  # bounds the file's size
        prov["file_sha256"] = sha256_of(p)
        return graph, None, prov
    if spec.endswith(".onnx"):
        if weights:
            raise FxpgaError("--weights does not apply to an .onnx model (it holds its weights)")
        prov["file_sha256"] = sha256_of(spec)
        return onnx_import.from_onnx(spec, shape), None, prov
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py") and attr:
        if weights:
            prov["weights"] = weights
            prov["weights_sha256"] = sha256_of(weights)
        return frontend.load_factory(spec, weights), None, prov
    raise FxpgaError(
        f"cannot interpret model '{spec}': expected a built-in name "
        f"({', '.join(zoo.BUILTIN_NAMES)}), path/file.py:factory, an export .pt2, or an .onnx"
    )


def graph_digest(graph) -> str:
    h = hashlib.sha256()
    for n in graph.nodes:
        h.update(f"{n.op}:{n.name}:{n.in_shape}:{n.out_shape}:{n.attrs()}".encode())
        if n.has_weights:
            h.update(n.weight.tobytes())
            h.update(n.bias.tobytes())
    return h.hexdigest()


def dataset_for(args, qm, missing: str = "--data is required"):
    """The dataset for a .fxq: ``--data``, else the one its provenance records; its samples
    must have the model's input shape and its labels the model's classes."""
    from ..quant import data

    spec = args.data or qm.provenance.get("dataset")
    if not spec:
        raise FxpgaError(f"{missing} (the .fxq records no dataset)")
    ds = data.load(spec)
    if ds.sample_shape != qm.graph.input_shape:
        raise FxpgaError(
            f"dataset {ds.name} has samples of shape {ds.sample_shape}, "
            f"{args.model} takes {qm.graph.input_shape}"
        )
    ds.check_labels(qm.graph.output_shape)
    return ds
