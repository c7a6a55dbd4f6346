"""``fxpga eval``: a ``.fxq``'s top-1, float and fixed point, on a dataset."""

from __future__ import annotations

from .common import dataset_for


def add(sub, common):
    e = sub.add_parser("eval", parents=[common], help="re-evaluate a .fxq on a dataset")
    e.add_argument("model", metavar="MODEL.fxq")
    e.add_argument(
        "--data",
        metavar="D",
        help="'digits', 'digits16', 'noise:CxHxW' or a .npz (default: the one the .fxq records)",
    )
    e.set_defaults(func=run)


def run(args) -> int:
    from ..quant import artifact, report

    qm = artifact.load(args.model)
    ds = dataset_for(args, qm)
    print(report.layer_table(qm))
    print(report.evaluate(qm, ds)[1])
    clipped = report.input_clipping_line(qm, ds.x_test, f"{ds.name}'s test split")
    if clipped:
        print(clipped)
    if qm.graph.host_tail:
        print(f"note: {report.host_tail_line(qm.graph)}")
    return 0
