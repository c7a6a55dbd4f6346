"""Text tables for ``fxpga quantize`` and ``fxpga eval``."""

from __future__ import annotations

import math

from .qmodel import QModel


def _db(v) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r):
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(header), line, *map(fmt, rows)])


MAX_SHOWN_NAME = 32  # longer layer names (TensorFlow exports' run to 200) are shown short


def display_names(qm: QModel) -> dict[str, str]:
    """A short, stable name for each tensor to show in tables: its own if at most
    ``MAX_SHOWN_NAME`` characters, else its op and its index among the layers of that op
    (``conv_3``, ``add_0``). The .fxq and the HTML report keep the full names."""
    taken = {la.name for la in qm.layers if len(la.name) <= MAX_SHOWN_NAME} | {"input"}
    shown, count = {"input": "input"}, {}
    for la in qm.layers:
        k = count[la.op] = count.get(la.op, -1) + 1
        if len(la.name) <= MAX_SHOWN_NAME:
            shown[la.name] = la.name
            continue
        short = f"{la.op}_{k}"
        while short in taken:
            short += "'"
        taken.add(short)
        shown[la.name] = short
    return shown


def _bits(fmt) -> str:
    return str(fmt.bits) if fmt.signed else f"u{fmt.bits}"


def weight_formats_line(qm: QModel) -> str:
    """Whether the model's weights got one format per layer or per output channel."""
    weighted = [la for la in qm.layers if la.w_fmt is not None]
    per = sum(la.per_channel for la in weighted)
    if not per:
        return "weights: one format per layer"
    return (
        f"weights: one fl per output channel in {per} of {len(weighted)} conv/fc layers "
        f"(fl_w shows their range)"
    )


def layer_table(qm: QModel) -> str:
    """One row per tensor: the input, then every layer's output (add and concat included).
    A graph that branches gets an "inputs" column naming what each layer reads. Long names
    are shown short (``display_names``); an unsigned width is ``u8``."""
    shown = display_names(qm)
    header = [
        "layer",
        "op",
        "out shape",
        "bits w/out",
        "fl_w",
        "fl_out",
        "W SQNR dB",
        "out SQNR dB",
        "acc bits",
    ]
    rows = [
        [
            "input",
            "input",
            "x".join(map(str, qm.graph.input_shape)),
            f"-/{_bits(qm.input_fmt)}",
            "-",
            str(qm.input_fmt.fl),
            "-",
            "-",
            "-",
        ]
    ]
    for la in qm.layers:
        shape = "x".join(map(str, la.node.out_shape))
        if la.w_fmt is None:
            rows.append(
                [
                    shown[la.name],
                    la.op,
                    shape,
                    f"-/{_bits(la.out_fmt)}",
                    "-",
                    str(la.out_fmt.fl),
                    "-",
                    _db(la.stats.get("output_sqnr_db")),
                    "-",
                ]
            )
            continue
        rows.append(
            [
                shown[la.name],
                la.op,
                shape,
                f"{la.w_fmt.bits}/{_bits(la.out_fmt)}",
                la.w_fl_text,
                str(la.out_fmt.fl),
                _db(la.stats.get("weight_sqnr_db")),
                _db(la.stats.get("output_sqnr_db")),
                str(la.acc_bits),
            ]
        )
    if not qm.graph.is_chain:
        header.insert(2, "inputs")
        rows[0].insert(2, "-")
        for row, la in zip(rows[1:], qm.layers, strict=True):
            row.insert(2, ",".join(shown.get(i, i) for i in la.node.inputs))
    return table(rows, header)


def input_clipping(qm: QModel, x) -> tuple[int, int]:
    """How many of the values in ``x`` the input format saturates (their rounded integer
    lies outside its range), out of how many."""
    import numpy as np

    q = np.floor(np.ldexp(np.asarray(x, dtype=np.float64), qm.input_fmt.fl) + 0.5)
    fmt = qm.input_fmt
    return int(np.count_nonzero((q < fmt.qmin) | (q > fmt.qmax))), int(q.size)


def input_clipping_line(qm: QModel, x, dataset: str) -> str | None:
    """A warning when the input format saturates any value of ``x``, else None."""
    n, total = input_clipping(qm, x)
    if not n:
        return None
    fmt = qm.input_fmt
    lo, hi = fmt.qmin * fmt.step, fmt.qmax * fmt.step
    return (
        f"warning: the input format {fmt!r} saturates {n:,} of the {total:,} values of "
        f"{dataset} ({100 * n / total:.3g}%) to [{lo:g}, {hi:g}]; a wider input format "
        f"(--config input) keeps them"
    )


def accuracy_line(float_acc: float, fixed_acc: float, n: int, dataset: str) -> str:
    d = 100 * (fixed_acc - float_acc)
    return (
        f"top-1 on {dataset} ({n} images): float {100 * float_acc:.2f}%  "
        f"fixed {100 * fixed_acc:.2f}%  ({d:+.2f} pt)"
    )


def host_tail_line(graph) -> str:
    """What the host applies after the integer network, and why top-1 is unaffected."""
    ops = " then ".join(graph.host_tail)
    last = graph.nodes[-1].name if graph.nodes else "the input"
    return (
        f"{ops} after '{last}' is applied by the host in float, not in fixed point (monotone: "
        f"the argmax and top-1 are those of the integer output)"
    )


def quality_line(sqnr_db: float, max_err: float, n: int, dataset: str) -> str:
    """For a model without labels: the fixed-point output against the float model's."""
    return (
        f"output on {dataset} ({n} samples, no labels): SQNR {sqnr_db:.1f} dB against "
        f"float, max |error| {max_err:.4g}"
    )


def evaluate(qm: QModel, ds) -> tuple[dict, str]:
    """How ``qm`` does on ``ds``'s test split: top-1 float and fixed with labels, else the
    output's SQNR and max |error| against float. (The figures, the line that says them.)"""
    from . import quantizer

    n = len(ds.x_test)
    if ds.labelled:
        f = quantizer.float_accuracy(qm.graph, ds.x_test, ds.y_test)
        q = quantizer.accuracy(qm, ds.x_test, ds.y_test)
        return {"float": f, "fixed": q}, accuracy_line(f, q, n, ds.name)
    sqnr, max_err = quantizer.output_quality(qm, ds.x_test)
    return {"sqnr_db": sqnr, "max_abs_error": max_err}, quality_line(sqnr, max_err, n, ds.name)
