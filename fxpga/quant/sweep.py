"""Accuracy against word width: the rows of Qiu et al.'s table and the accuracy-vs-bits curve.

Both re-run the quantizer on a float graph (BatchNorm already folded) at other widths and
measure top-1 with the golden model, so they need only the graph and a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..progress import bar as progress_bar
from . import ir, quantizer
from .data import Dataset


@dataclass(frozen=True)
class Scheme:
    """One row of the accuracy table: activation / conv / fc weight widths and the scheme."""

    label: str
    widths: tuple[int, int, int]  # act, conv_w, fc_w
    scheme: str = "qiu"
    max_drop_pt: float | None = None  # allowed top-1 drop vs float, None: reported only


# The rows of Qiu et al.'s Table (FPGA 2016), in its order, in their scheme (qiu), plus the
# static baselines and fxpga's default scheme
TABLE = (
    Scheme("16-bit dynamic", (16, 16, 16), "qiu", 0.0),
    Scheme("8-bit dynamic", (8, 8, 8), "qiu", 0.5),
    Scheme("8/4 dynamic (conv 8, fc 4)", (8, 8, 4), "qiu", 2.0),
    Scheme("8-bit static", (8, 8, 8), "static"),
    Scheme("6-bit dynamic", (6, 6, 6), "qiu"),
    Scheme("4-bit dynamic", (4, 4, 4), "qiu"),
    Scheme("16-bit static", (16, 16, 16), "static"),
    Scheme("8-bit, fxpga's default scheme", (8, 8, 8), "dynamic"),
    Scheme("8/4, fxpga's default scheme", (8, 8, 4), "dynamic"),
)

CURVE_BITS = (3, 4, 5, 6, 7, 8, 10, 12, 16)


@dataclass
class Result:
    scheme: Scheme
    top1: float
    fls: str  # "in F; w/out w/out ..." per conv/linear


def measure(graph: ir.Graph, ds: Dataset, scheme: Scheme, calib: int = 256) -> Result:
    qm = quantizer.quantize_model(
        graph, ds.x_calib[:calib], quantizer.Widths(*scheme.widths), scheme=scheme.scheme
    )
    fls = " ".join(f"{la.w_fl_text}/{la.out_fmt.fl}" for la in qm.layers if la.w_fmt)
    top1 = quantizer.accuracy(qm, ds.x_test, ds.y_test)
    return Result(scheme, top1, f"in {qm.input_fmt.fl}; {fls}")


def table(graph: ir.Graph, ds: Dataset, rows=TABLE, progress: bool = False) -> list[Result]:
    return [measure(graph, ds, s) for s in progress_bar(rows, "accuracy table", progress)]


def bits_curve(
    graph: ir.Graph,
    ds: Dataset,
    bits=CURVE_BITS,
    schemes=("dynamic", "static"),
    progress: bool = False,
) -> dict[str, list[tuple[int, float]]]:
    """Top-1 for every width in ``bits`` (activations and all weights alike), per scheme."""
    todo = [(s, b) for s in schemes for b in bits]
    out: dict[str, list[tuple[int, float]]] = {s: [] for s in schemes}
    for s, b in progress_bar(todo, "accuracy vs bits", progress):
        out[s].append((b, measure(graph, ds, Scheme(f"{b}-bit {s}", (b, b, b), s)).top1))
    return out
