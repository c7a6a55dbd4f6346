"""``fxpga build``: a bitstream for a board (yowasp yosys + nextpnr), its resources and fmax."""

from __future__ import annotations

from .. import limits
from ..errors import FxpgaError
from .common import BOARDS, bounded, info, lanes, seed


def add(sub, common):
    b = sub.add_parser(
        "build",
        parents=[common],
        help="build a bitstream for a board",
        description="Synthesize, place and route the engine with the model "
        "for a board (yowasp yosys + nextpnr) and report resources "
        "and fmax.",
    )
    b.add_argument("model", metavar="MODEL.fxq")
    b.add_argument("--board", required=True, choices=BOARDS)
    b.add_argument(
        "--lanes", type=lanes, help="MAC lanes [the board's default, or the most that fit]"
    )
    b.add_argument(
        "--freq",
        type=bounded(limits.MIN_FREQ_MHZ, limits.MAX_FREQ_MHZ, "MHz"),
        metavar="MHZ",
        help="engine clock, made by the board's PLL when it is not the oscillator's "
        "[the board's default]",
    )
    b.add_argument("--seed", type=seed, default=1, help="nextpnr placement seed [1]")
    b.add_argument(
        "--allow-timing-fail", action="store_true", help="exit 0 even if fmax is below the target"
    )
    b.add_argument("-o", "--output", required=True, metavar="DIR")
    b.set_defaults(func=run)


def run(args) -> int:
    from ..boards import build as boards
    from ..outdir import OutputDir
    from ..quant import artifact

    out_dir = OutputDir(args.output, make_parents=True)  # refused before any work
    qm = artifact.load(args.model)
    spec = boards.board(args.board)
    out = out_dir.path
    rep = boards.build(
        qm,
        args.board,
        out_dir,
        lanes=args.lanes,
        freq_mhz=args.freq,
        seed=args.seed,
        info=lambda m: info(args, m),
    )
    for line in rep.lines():
        print(line)
    if spec.note:
        print(f"  note: {spec.note}")
    print(f"wrote {rep.bitstream} and the logs and report in {out}/")
    if not rep.timing_met and not args.allow_timing_fail:
        crit = "; ".join(rep.critical_path[-3:]) or "see fxpga.tim"
        fmax = boards.mhz(rep.fmax_mhz or 0, rep.target_mhz)
        raise FxpgaError(
            f"timing not met on {args.board}: fmax {fmax} MHz < "
            f"target {rep.target_mhz:.1f} MHz (critical path: {crit}); "
            f"--allow-timing-fail keeps the build"
        )
    return 0
