"""``fxpga run``: test images through a board over its serial port, against the golden model."""

from __future__ import annotations

import contextlib
import time

from .. import limits
from ..errors import FxpgaError
from .common import bounded, dataset_for, images, info


def add(sub, common):
    r = sub.add_parser(
        "run",
        parents=[common],
        help="run inference on a board over serial",
        description="Run test images on a board over its serial port; the "
        "board's model hash must match MODEL.",
    )
    r.add_argument("model", metavar="MODEL.fxq")
    r.add_argument("--port", required=True, help="serial port or pyserial URL")
    r.add_argument(
        "--baud",
        type=bounded(limits.MIN_BAUD, limits.MAX_BAUD, "baud"),
        default=1_000_000,
        help="[1000000]",
    )
    r.add_argument("--data", metavar="D", help="dataset [the one recorded in the .fxq]")
    r.add_argument("--samples", type=images, default=100, metavar="N", help="[100]")
    r.add_argument(
        "--timeout",
        type=bounded(limits.MIN_TIMEOUT_S, limits.MAX_TIMEOUT_S, "seconds"),
        default=2.0,
        help="how long to wait for each reply, s; RUN's at least the inference's time at the "
        "slowest engine clock [2]",
    )
    r.set_defaults(func=run)


def run(args) -> int:
    import serial

    from ..boards import protocol
    from ..quant import artifact

    qm = artifact.load(args.model)
    ds = dataset_for(args, qm)
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.05)
    except (OSError, ValueError) as e:  # OSError: pyserial's SerialException too
        raise FxpgaError(f"{args.port}: cannot open the serial port: {e}") from e
    try:
        return _run(args, qm, ds, protocol.Link(port, timeout=args.timeout, name=args.port))
    finally:
        with contextlib.suppress(OSError):  # unplugged mid-run: the run's error says so
            getattr(port, "close", lambda: None)()


def _run(args, qm, ds, link) -> int:
    import numpy as np

    from ..boards import protocol
    from ..progress import bar
    from ..quant import golden
    from ..sim.simulate import to_engine_order

    ident = link.identify()
    prog = board_program(qm, ident)
    if ident.model_hash != protocol.model_hash(prog):
        raise FxpgaError(
            f"the board at {args.port} runs a different model or engine "
            f"(board {ident.model_hash.hex()}, {args.model} compiled for "
            f"{ident.lanes} lanes {protocol.model_hash(prog).hex()}): "
            f"build and load its bitstream first"
        )
    sizes = {
        "in_size": (ident.in_size, prog.in_size),
        "out_size": (ident.out_size, prog.out_size),
        "data_bits": (ident.data_bits, prog.config.data_bits),
    }
    for field, (board, want) in sizes.items():
        if board != want:
            raise FxpgaError(
                f"{args.port}: the board's IDENT gives {field} {board}, {args.model}'s program "
                f"has {want}: the board's engine does not match its model hash"
            )
    if ident.weights_at_runtime:
        info(args, f"loading {sum(map(len, prog.wmem)):,} weights into the board")
        link.load_weights(prog, lambda it: bar(it, desc="weights", enabled=not args.quiet))
    n = min(args.samples, len(ds.x_test))
    xi = golden.quantize_input(qm, ds.x_test[:n])
    want = prog.words(to_engine_order(golden.run_int(qm, xi).reshape(n, -1), prog.out_shape))
    samples = prog.to_engine(xi)
    # an inference's time at the slowest engine clock fxpga builds: RUN's reply may take that
    run_time = prog.total_cycles / (limits.MIN_FREQ_MHZ * 1e6)
    bad, cycles, walls, outs = 0, [], [], []
    for i in bar(range(n), desc="board", enabled=not args.quiet):
        t = time.perf_counter()
        got, cyc = link.infer(samples[i], ident, run_time=run_time)
        walls.append(time.perf_counter() - t)
        cycles.append(cyc)
        outs.append(got)
        bad += got != want[i].tolist()
    top1 = prog.from_engine(np.array(outs)).argmax(axis=1)
    acc = f", accuracy {100 * float(np.mean(top1 == ds.y_test[:n])):.2f}%" if ds.labelled else ""
    print(f"{args.port}: {n} images, {bad} mismatches against the golden model{acc}")
    print(
        f"engine cycles per inference: {min(cycles):,}..{max(cycles):,}; host round trip "
        f"{1e3 * float(np.mean(walls)):.1f} ms per image (UART included)"
    )
    if bad:
        raise FxpgaError(f"{bad} of {n} board outputs differ from the golden model")
    return 0


def board_program(qm, ident):
    """``qm`` compiled for the engine the board identifies as: the engine some board
    builds for it at that many lanes (``Board.engine_config``, which IDENT does not
    spell out: banks, feature maps in SPRAM, channel split) whose program hashes as the
    board's, else the plain engine of its lanes, post-processing lanes and weight store."""
    from ..boards import build as boards
    from ..boards import protocol
    from ..hw import compiler

    want = (ident.lanes, ident.post_lanes, "spram" if ident.weights_at_runtime else "bram")
    plain = compiler.EngineConfig.for_model(
        qm, ident.lanes, post_lanes=ident.post_lanes, weight_store=want[2]
    )
    for name in boards.BOARDS:
        try:
            cfg = boards.board(name).engine_config(qm, ident.lanes)
            if (cfg.lanes, cfg.post_lanes, cfg.weight_store) != want:
                continue
            prog = compiler.compile_model(qm, cfg)
        except FxpgaError:
            continue
        if protocol.model_hash(prog) == ident.model_hash:
            return prog
    return compiler.compile_model(qm, plain)
