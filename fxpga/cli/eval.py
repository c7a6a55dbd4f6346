"""``fxpga eval``: a ``.fxq``'s top-1, float and fixed point, on a dataset."""

from __future__ import annotations

from .common import dataset_for


def add(sub, common):
    e = sub.add_parser("eval", parents=[common], help="re-evaluate a .fxq on a dataset")
    e.add_argument("model", metavar="MODEL.fxq")
    e.add_argument("--data", required=True, metavar="D", help="'digits' or a .npz")
    e.set_defaults(func=run)


def run(args) -> int:
    from ..quant import artifact, quantizer, report

    qm = artifact.load(args.model)
    ds = dataset_for(args, qm)
    print(report.layer_table(qm))
    if ds.labelled:
        float_acc = quantizer.float_accuracy(qm.graph, ds.x_test, ds.y_test)
        fixed_acc = quantizer.accuracy(qm, ds.x_test, ds.y_test)
        print(report.accuracy_line(float_acc, fixed_acc, len(ds.y_test), ds.name))
    else:
        sqnr, max_err = quantizer.output_quality(qm, ds.x_test)
        print(report.quality_line(sqnr, max_err, len(ds.x_test), ds.name))
    if qm.graph.host_tail:
        print(f"note: {report.host_tail_line(qm.graph)}")
    return 0
