"""``fxpga report``: one page on a quantized model, as self-contained HTML or as Markdown.

Sections: the model and its accuracy; per-layer formats; profiling histograms of weights and
layer outputs with each format's range shaded (hls4ml's view); top-1 against word width; the
engine's cycles per op; and, given a build directory, the board's resources and fmax.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FxpgaError
from ..limits import MAX_LANES
from ..outdir import OutputDir, atomic_write
from ..quant import quantizer, sweep
from ..quant.data import Dataset
from ..quant.qmodel import QModel
from ..quant.report import host_tail_line
from . import plots

CALIB_PROFILE = 256  # calibration images profiled


@dataclass
class Image:
    name: str  # file stem in Markdown output
    alt: str
    png: bytes


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _db(v) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.1f}")


def tensors(qm: QModel, x_calib: np.ndarray) -> list[list[plots.Tensor]]:
    """Rows of the profile: the input, then per conv/linear its weights and its output, and
    per add/concat its output, on ``x_calib`` in float (after a ReLU that alone reads it, as
    the quantizer compares it)."""
    ref = qm.graph.float_forward(x_calib, keep=True)
    relu_only = quantizer.read_by_relu_only(qm.graph)
    rows = [[plots.Tensor("input", "input", np.asarray(x_calib), qm.input_fmt)]]
    for la in qm.layers:
        if la.w_fmt is None and la.node.arity is not None:
            continue  # keeps its input's format
        y = ref[la.name]
        if la.name in relu_only:
            y = np.maximum(y, 0)
        row = [plots.Tensor(la.name, "output", y, la.out_fmt)]
        if la.w_fmt is not None:
            row.insert(0, plots.Tensor(la.name, "weights", la.node.weight, la.w_fmt))
        rows.append(row)
    return rows


def _summary(qm: QModel, name: str, ds: Dataset, f_acc: float, q_acc: float) -> Section:
    p = qm.provenance
    w = p.get("widths", {})
    rows = [
        ["model", name],
        [
            "scheme",
            f"{qm.scheme}; activations {w.get('act', '?')} bits, conv/fc weights "
            f"{w.get('conv_w', '?')}/{w.get('fc_w', '?')} bits",
        ],
        ["input", f"{'x'.join(map(str, qm.graph.input_shape))}, {qm.input_fmt!r}"],
        ["calibration", f"{p.get('calib_images', '?')} images of {p.get('dataset', '?')}"],
        ["top-1 float", f"{_pct(f_acc)} ({len(ds.y_test)} test images of {ds.name})"],
        ["top-1 fixed (golden model)", f"{_pct(q_acc)} ({100 * (q_acc - f_acc):+.2f} pt)"],
        ["quantized by", f"fxpga {p.get('fxpga', '?')}"],
    ]
    if qm.graph.host_tail:
        rows.insert(3, ["on the host", host_tail_line(qm.graph)])
    return Section("Model", tables=[(["", ""], rows)])


def _layers(qm: QModel) -> Section:
    header = [
        "layer",
        "op",
        "out shape",
        "weights",
        "output",
        "W SQNR dB",
        "out SQNR dB",
        "acc bits",
        "saturated out %",
    ]
    rows = []
    for la in qm.layers:
        s = la.stats
        rows.append(
            [
                la.name,
                la.op,
                "x".join(map(str, la.node.out_shape)),
                f"Q{la.w_fmt.bits}.{la.w_fl_text}" if la.w_fmt else "-",
                repr(la.out_fmt),
                _db(s.get("weight_sqnr_db")),
                _db(s.get("output_sqnr_db")),
                str(la.acc_bits) if la.acc_bits else "-",
                f"{s['saturated_outputs_pct']:.2f}" if "saturated_outputs_pct" in s else "-",
            ]
        )
    paras = [
        "Every tensor: the output of each layer. Qn.f: n-bit two's complement with f "
        "fractional bits (value = int × 2^-f). SQNR against the float model on the calibration "
        "images, as measured when quantizing; layers without one keep their input's format."
    ]
    if not qm.graph.is_chain:
        header.insert(2, "inputs")
        for row, la in zip(rows, qm.layers, strict=True):
            row.insert(2, ", ".join(la.node.inputs))
        paras.append(
            "The graph branches: add and concat align each input to their output format "
            "(a rounding shift, then saturation; docs/numerics.md)."
        )
    return Section("Layers", paras, [(header, rows)])


def _profile(qm: QModel, x_calib: np.ndarray) -> Section:
    rows = tensors(qm, x_calib)
    table = []
    for r in rows:
        for t in r:
            zero, sat = t.fractions()
            table.append(
                [
                    t.layer,
                    t.kind,
                    repr(t.fmt),
                    f"2^{t.lo:g} .. 2^{t.hi:g}",
                    f"{100 * zero:.2f}",
                    f"{100 * sat:.2f}",
                ]
            )
    return Section(
        "Profile",
        [
            f"Histograms of log2|x| over the non-zero values: weights, and each layer's float "
            f"output on {len(x_calib)} calibration images. The shaded band is what the chosen "
            f"format represents: from one step (2^-fl) to its largest magnitude. Mass left of "
            f"the band rounds to zero, mass right of it saturates."
        ],
        [(["layer", "tensor", "format", "range", "→ 0 %", "saturated %"], table)],
        [Image("profile", "weight and output histograms with format ranges", plots.profile(rows))],
    )


def _accuracy(
    qm: QModel, name: str, ds: Dataset, f_acc: float, q_acc: float, progress: bool
) -> Section:
    curve = sweep.bits_curve(qm.graph, ds, progress=progress)
    bits = qm.provenance.get("widths", {}).get("act", qm.input_fmt.bits)
    png = plots.accuracy_vs_bits({name: curve}, {name: f_acc}, {name: (bits, q_acc)})
    header = ["bits", *curve]
    rows = [[str(b), *(f"{100 * dict(curve[s])[b]:.2f}" for s in curve)] for b in sweep.CURVE_BITS]
    return Section(
        "Accuracy against word width",
        [
            f"Top-1 % on {len(ds.y_test)} test images when the same float model is quantized at "
            f"each width (activations and weights alike): dynamic = fxpga's default scheme "
            f"(Qiu et al.'s per-layer fl, unsigned formats where values cannot be negative, a "
            f"weight fl per output channel, bias correction, the output objective), static = "
            f"one fl for all weights and one for all activations. The star is this "
            f".fxq ({_pct(q_acc)}); the dotted line the float model ({_pct(f_acc)})."
        ],
        [(header, rows)],
        [Image("accuracy_bits", "top-1 against bits", png)],
    )


MAX_BUILD_REPORT_BYTES = 1 << 20  # fxpga build writes ~500 bytes


def _build_info(build_dir: Path) -> dict:
    f = build_dir / "build_report.json"
    if not f.is_file():
        raise FxpgaError(
            f"--build {build_dir}: no build_report.json (not an fxpga build directory)"
        )
    if f.stat().st_size > MAX_BUILD_REPORT_BYTES:
        raise FxpgaError(
            f"{f}: larger than {MAX_BUILD_REPORT_BYTES} bytes (not written by fxpga build)"
        )
    try:
        build = json.loads(f.read_bytes())
    except json.JSONDecodeError as e:
        raise FxpgaError(f"{f}: not valid JSON: {e.msg} (line {e.lineno})") from e
    except (ValueError, RecursionError) as e:
        raise FxpgaError(f"{f}: not valid JSON ({type(e).__name__})") from None
    missing = [
        k for k in ("board", "lanes", "cycles") if not isinstance(build, dict) or k not in build
    ]
    if missing:
        raise FxpgaError(f"{f}: no {', '.join(missing)} (not written by fxpga build?)")
    _check_build_fields(f, build)
    return build


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and 0 < v < 1e6


def _check_build_fields(f: Path, build: dict):
    """Each field's type and range, as ``fxpga build`` writes them."""
    from ..boards.build import BOARDS

    def bad(key, what):
        raise FxpgaError(f"{f}: '{key}' must be {what}, not {build.get(key)!r:.40}")

    if build["board"] not in BOARDS:
        bad("board", f"one of {', '.join(sorted(BOARDS))}")
    if not _is_int(build["lanes"]) or not 1 <= build["lanes"] <= MAX_LANES:
        bad("lanes", f"an integer 1..{MAX_LANES}")
    if not _is_int(build["cycles"]) or build["cycles"] < 1:
        bad("cycles", "a positive integer")
    if build.get("fmax_mhz") is not None and not _is_num(build["fmax_mhz"]):
        bad("fmax_mhz", "a frequency in MHz or null")
    if build.get("fmax_mhz") is not None and not _is_num(build.get("target_mhz")):
        bad("target_mhz", "a frequency in MHz")
    for key in ("used", "available"):
        table = build.get(key, {})
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and _is_int(v) and 0 <= v < 1 << 40 for k, v in table.items()
        ):
            bad(key, "a table of resource counts")


def _engine(qm: QModel, lanes: int, build: dict | None) -> tuple[Section, object]:
    from ..hw import compiler

    if build:
        from ..boards import build as boards

        cfg = boards.board(build["board"]).engine_config(qm, build["lanes"])
    else:
        cfg = compiler.EngineConfig.for_model(qm, lanes)
        try:
            compiler.check_ops(qm)
        except FxpgaError as e:
            return Section("Engine cycles", [f"No cycle table: {e}."]), None
    prog = compiler.compile_model(qm, cfg)
    if build and build.get("cycles") != prog.total_cycles:
        raise FxpgaError(
            f"the build is for another model or engine: it runs {build.get('cycles'):,} cycles "
            f"per image, this .fxq on {build['board']}'s engine {prog.total_cycles:,}"
        )
    names, util, rows = [], [], []
    for op, cyc in zip(prog.ops, prog.estimate, strict=True):
        u = op.macs / (cfg.lanes * cyc)
        names.append(op.name)
        util.append(u)
        rows.append(
            [op.name, "+".join(op.fused[1:]) or "-", f"{op.macs:,}", f"{cyc:,}", f"{100 * u:.1f}"]
        )
    total_u = prog.total_macs / (cfg.lanes * prog.total_cycles)
    rows.append(
        ["total", "", f"{prog.total_macs:,}", f"{prog.total_cycles:,}", f"{100 * total_u:.1f}"]
    )
    where = f"{build['board']}'s engine" if build else "the engine"
    png = plots.cycle_breakdown(
        names,
        prog.estimate,
        util,
        f"{where}: {cfg.lanes} lanes, {prog.total_cycles:,} cycles/image",
    )
    return Section(
        "Engine cycles",
        [
            f"Exact cycles per op of {where} with {cfg.lanes} lanes ({cfg.post_lanes} post-"
            f"processing lanes), as the cycle-accurate simulations measure them. MAC "
            f"utilization = MACs / (lanes × cycles)."
        ],
        [(["op", "fused", "MACs", "cycles", "MAC util %"], rows)],
        [Image("cycles", "cycles per op", png)],
    ), prog


def _resources(build: dict, build_dir: Path, prog) -> Section:
    from ..boards.build import mhz

    used, avail = build.get("used", {}), build.get("available", {})
    rows = [
        [
            k,
            f"{v:,}",
            f"{avail[k]:,}" if k in avail else "-",
            f"{100 * v / avail[k]:.1f}" if avail.get(k) else "-",
        ]
        for k, v in used.items()
    ]
    fmax, target = build.get("fmax_mhz"), build.get("target_mhz")
    paras = [f"Build in {build_dir} for {build['board']} with {build['lanes']} lanes."]
    if fmax:
        lat = prog.total_cycles / (fmax * 1e6)
        met = "met" if fmax >= target else "**not met**"
        paras.append(
            f"fmax {mhz(fmax, target)} MHz for a {target:.1f} MHz clock ({met}). At fmax: "
            f"{1e6 * lat:.1f} µs per image, {prog.total_macs / lat / 1e9:.3f} GMAC/s of "
            f"{build['lanes'] * fmax / 1e3:.3f} peak (lanes × fmax)."
        )
    else:
        paras.append("nextpnr reported no fmax.")
    return Section("Build", paras, [(["resource", "used", "available", "%"], rows)])


def make(
    qm: QModel,
    name: str,
    ds: Dataset,
    build_dir: Path | None = None,
    lanes: int = 8,
    progress: bool = False,
) -> Report:
    """Everything for the report of ``qm`` (called ``name``) evaluated on ``ds``."""
    build = _build_info(Path(build_dir)) if build_dir else None
    f_acc = quantizer.float_accuracy(qm.graph, ds.x_test, ds.y_test)
    q_acc = quantizer.accuracy(qm, ds.x_test, ds.y_test)
    engine, prog = _engine(qm, lanes, build)
    sections = [
        _summary(qm, name, ds, f_acc, q_acc),
        _layers(qm),
        _profile(qm, ds.x_calib[:CALIB_PROFILE]),
        _accuracy(qm, name, ds, f_acc, q_acc, progress),
        engine,
    ]
    if build:
        sections.append(_resources(build, Path(build_dir), prog))
    return Report(f"fxpga report: {name}", sections)


# ---- output


def _inline(s: str) -> str:
    """HTML of a paragraph: escaped, with **bold** kept."""
    parts = html.escape(s).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


CSS = """body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:90%}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
td:first-child,th:first-child,table.kv td{text-align:left}th{background:#f2f2f2}
img{max-width:100%;display:block;margin:.8em 0}h2{border-bottom:1px solid #ddd}"""


def to_html(rep: Report) -> str:
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}"
        f"</title><style>{CSS}</style></head><body><h1>{html.escape(rep.title)}</h1>"
    ]
    for s in rep.sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        for img in s.images:
            b64 = base64.b64encode(img.png).decode()
            out.append(f"<img alt='{html.escape(img.alt)}' src='data:image/png;base64,{b64}'>")
        for header, rows in s.tables:
            out.append("<table>" if any(header) else "<table class='kv'>")
            if any(header):
                out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for r in rows:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def to_markdown(rep: Report, files: str) -> str:
    """Markdown with images linked as ``files/<name>.png``."""
    out = [f"# {rep.title}\n"]
    for s in rep.sections:
        out.append(f"## {s.title}\n")
        out += [f"{p}\n" for p in s.paragraphs]
        for img in s.images:
            out.append(f"![{img.alt}]({files}/{img.name}.png)\n")
        for header, rows in s.tables:
            cells = [header if any(header) else ["", ""], *rows]
            esc = [[str(c).replace("|", "\\|") for c in r] for r in cells]
            out.append("| " + " | ".join(esc[0]) + " |")
            out.append("|" + "|".join("---" for _ in esc[0]) + "|")
            out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
            out.append("")
    return "\n".join(out)


def output_dir(path: Path) -> OutputDir | None:
    """The ``<stem>_files/`` directory of a Markdown report, checked before any work (None for
    HTML, which is one file)."""
    path = Path(path)
    if path.suffix not in (".html", ".md"):
        raise FxpgaError(f"-o {path}: the report must end in .html or .md")
    if path.is_dir():
        raise FxpgaError(f"-o {path}: is a directory; the report is a file")
    if not path.parent.is_dir():
        raise FxpgaError(f"-o {path}: directory '{path.parent}' does not exist")
    if path.suffix == ".html":
        return None
    return OutputDir(path.with_name(f"{path.stem}_files"), opt=f"-o {path}: images in")


def write(rep: Report, path: Path, files: OutputDir | None = None) -> list[Path]:
    """``path`` ending in .html (self-contained) or .md (+ ``<stem>_files/`` of PNGs, a
    directory fxpga owns: see :mod:`fxpga.outdir`). Written to temporary names and renamed into
    place; returns what was written."""
    path = Path(path)
    if files is None:
        files = output_dir(path)
    if path.suffix == ".html":
        atomic_write(path, to_html(rep).encode())
        return [path]
    with files as tmp:
        for s in rep.sections:
            for img in s.images:
                (tmp / f"{img.name}.png").write_bytes(img.png)
    atomic_write(path, to_markdown(rep, files.path.name).encode())
    return [path, files.path]
