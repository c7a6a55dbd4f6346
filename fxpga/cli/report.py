"""``fxpga report``: an HTML or Markdown report on a ``.fxq`` (and a board build)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FxpgaError
from .common import dataset_for, info, lanes


def add(sub, common):
    rp = sub.add_parser(
        "report",
        parents=[common],
        help="write an HTML or Markdown report on a model (and a build)",
        description="Per-layer formats, weight and activation histograms with the chosen "
        "fixed-point ranges, accuracy against word width, the engine's cycles per op and, "
        "with --build, a board build's resources and fmax.",
    )
    rp.add_argument("model", metavar="MODEL.fxq")
    rp.add_argument("--build", metavar="DIR", help="a directory written by fxpga build")
    rp.add_argument(
        "--lanes",
        type=lanes,
        default=8,
        help="MAC lanes for the cycle table without --build [8]",
    )
    rp.add_argument("--data", metavar="D", help="dataset [the one recorded in the .fxq]")
    rp.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="report.html (self-contained) or .md"
    )
    rp.set_defaults(func=run)


def run(args) -> int:
    from .. import report
    from ..quant import artifact

    qm = artifact.load(args.model)
    out = Path(args.output)
    files = report.output_dir(out)  # refused before any work
    ds = dataset_for(args, qm)
    if not ds.labelled:
        raise FxpgaError(
            f"{ds.name} has no labels (y): fxpga report measures top-1 and needs them; "
            f"fxpga eval reports SQNR and max |error| for models without labels"
        )
    info(args, f"profiling {args.model} on {ds.name} and sweeping word widths ...")
    rep = report.make(
        qm,
        qm.provenance.get("model") or Path(args.model).name,
        ds,
        build_dir=args.build,
        lanes=args.lanes,
        progress=not args.quiet,
    )
    written = report.write(rep, out, files)
    print(f"wrote {' and '.join(str(p) for p in written)}")
    return 0
