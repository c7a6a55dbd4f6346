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


def layer_table(qm: QModel) -> str:
    """One row per tensor: the input, then every layer's output (add and concat included).
    A graph that branches gets an "inputs" column naming what each layer reads."""
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
            f"-/{qm.input_fmt.bits}",
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
                    la.name,
                    la.op,
                    shape,
                    f"-/{la.out_fmt.bits}",
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
                la.name,
                la.op,
                shape,
                f"{la.w_fmt.bits}/{la.out_fmt.bits}",
                str(la.w_fmt.fl),
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
            row.insert(2, ",".join(la.node.inputs))
    return table(rows, header)


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
