"""``fxpga compile``: a ``.fxq`` laid out for the engine (program, memory images, Verilog),
optionally checked in Amaranth's simulator against the golden model."""

from __future__ import annotations

import time

from ..errors import FxpgaError
from .common import acc_bits, dataset_for, engine_bits, images, info, lanes


def add(sub, common):
    c = sub.add_parser(
        "compile",
        parents=[common],
        help="compile a .fxq for the engine",
        description="Lay a quantized model out for the engine: layer program, "
        "memory images, Verilog, and a per-layer cycle estimate.",
    )
    c.add_argument("model", metavar="MODEL.fxq")
    c.add_argument("--lanes", type=lanes, default=8, help="MAC lanes [8]")
    c.add_argument("--data-bits", type=engine_bits, help="feature-map word [what the model needs]")
    c.add_argument("--weight-bits", type=engine_bits, help="weight word [what the model needs]")
    c.add_argument(
        "--acc-bits", type=acc_bits, help="accumulator width [what the model needs, >= 16]"
    )
    c.add_argument("--no-verilog", action="store_true", help="skip the Verilog (faster)")
    c.add_argument(
        "--check",
        type=images,
        metavar="N",
        help="run N test images in Amaranth's simulator against the golden model",
    )
    c.add_argument("--data", metavar="D", help="dataset for --check [the one in the .fxq]")
    c.add_argument("-o", "--output", required=True, metavar="DIR")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..hw import compiler, output
    from ..outdir import OutputDir
    from ..quant import artifact, report

    out_dir = OutputDir(args.output)  # refused before any work
    qm = artifact.load(args.model)
    cfg = compiler.EngineConfig.for_model(
        qm,
        args.lanes,
        data_bits=args.data_bits,
        weight_bits=args.weight_bits,
        acc_bits=args.acc_bits,
    )
    info(
        args,
        f"compiling {args.model} for {cfg.lanes} lanes ({cfg.data_bits}-bit data, "
        f"{cfg.weight_bits}-bit weights, {cfg.acc_bits}-bit accumulators)",
    )
    prog = compiler.compile_model(qm, cfg)
    out = output.write(
        prog, out_dir, verilog=not args.no_verilog, model_sha=qm.provenance.get("model_sha256")
    )
    print(report.table(output.estimate_rows(prog), output.ESTIMATE_HEADER))
    print(
        f"memories: feature maps 2 x {prog.fmap_depth} x {cfg.data_bits} bit, weights "
        f"{cfg.lanes} x {len(prog.wmem[0])} x {cfg.weight_bits} bit, biases {len(prog.bmem)} "
        f"x {cfg.acc_bits} bit"
    )
    print(
        f"wrote {out}/ (program.json, program.hex, bias.hex, wbank*.hex"
        f"{', fxpga_engine.v' if not args.no_verilog else ''})"
    )
    if args.check:
        return check_in_amaranth(args, qm, prog)
    return 0


def check_in_amaranth(args, qm, prog) -> int:
    """Run test images through the engine in Amaranth's simulator against the golden model."""
    import numpy as np

    from ..hw import amsim
    from ..progress import bar
    from ..quant import golden

    ds = dataset_for(args, qm, "--check needs --data")
    n = min(args.check, len(ds.x_test))
    xi = golden.quantize_input(qm, ds.x_test[:n])
    want = golden.run_int(qm, xi).reshape(n, -1)
    bad, cycles = 0, []
    t0 = time.monotonic()
    for i in bar(range(n), desc="Amaranth simulation", enabled=not args.quiet):
        got, cyc = amsim.run_engine(prog, xi[i : i + 1])
        cycles += cyc
        if not np.array_equal(got[0], want[i]):
            bad += 1
            print(f"mismatch on test image {i}: engine {got[0].tolist()} golden {want[i].tolist()}")
    dt = time.monotonic() - t0
    print(
        f"Amaranth simulation: {n - bad}/{n} images bit-exact with golden; cycles per image "
        f"{min(cycles)}..{max(cycles)} (estimate {prog.total_cycles}); "
        f"{sum(cycles) / dt:,.0f} cycles/s"
    )
    if bad:
        raise FxpgaError(f"{bad} of {n} images differ from the golden model")
    return 0
