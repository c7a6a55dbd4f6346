"""``fxpga quantize``: a model to per-layer dynamic fixed point, written as a ``.fxq``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import __version__
from ..errors import FxpgaError
from .common import (
    bits,
    check_output,
    graph_digest,
    images,
    info,
    input_shape,
    load_graph,
    load_seconds,
)


def add(sub, common):
    from ..quant import zoo

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
        help=f"built-in name ({', '.join(zoo.BUILTIN_NAMES)}), path/file.py:factory, a "
        "torch.export .pt2, or an ONNX .onnx",
    )
    q.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="C,H,W",
        help="per-sample input shape of an .onnx model whose input dimensions are dynamic",
    )
    q.add_argument(
        "--data",
        metavar="D",
        help="'digits' or a .npz with x (float32 NCHW) and y (labels) "
        "[default: the built-in model's dataset]",
    )
    q.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict for a file.py:factory model (torch.load weights_only=True), or a "
        ".npz written by fxpga train for a built-in model [its shipped weights]",
    )
    q.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a .pt2 through torch.export.load as it is, which can run code stored in the "
        "file (pickled objects, Python expressions): only for an archive you made or trust "
        "[without it, fxpga loads only the plain program and weights and refuses the rest]",
    )
    q.add_argument(
        "--timeout",
        type=load_seconds,
        metavar="SECONDS",
        help="give up loading MODEL (importing file.py and running its factory included) "
        "after this long, 1..86400 [no limit]",
    )
    q.add_argument("--bits", type=bits, default=8, help="word width everywhere [8]")
    q.add_argument("--conv-bits", type=bits, help="conv weight width [--bits]")
    q.add_argument("--fc-bits", type=bits, help="fully-connected weight width [--bits]")
    q.add_argument(
        "--scheme",
        choices=("dynamic", "qiu", "static"),  # quantizer.SCHEMES
        default="dynamic",
        help="dynamic: per-layer fl with the options below on (default); qiu: Qiu et al.'s "
        "per-layer fl, the options off; static: one fl everywhere (baseline)",
    )
    on = "[on in the dynamic scheme]"
    q.add_argument(
        "--unsigned",
        action=argparse.BooleanOptionalAction,
        help=f"store the outputs only a ReLU reads unsigned (every bit of the word for values "
        f"that cannot be negative) {on}",
    )
    q.add_argument(
        "--input-unsigned",
        action="store_true",
        help="the input is non-negative (images in [0, 1]): store it unsigned too",
    )
    q.add_argument(
        "--bias-correction",
        action=argparse.BooleanOptionalAction,
        help=f"move each conv/fc bias by its channel's mean error on the calibration set {on}",
    )
    q.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        help=f"a weight fl per output channel, each requantized by its own shift {on}",
    )
    q.add_argument(
        "--objective",
        choices=("l1", "l2", "output"),  # quantizer.OBJECTIVES
        help="what the fl search minimises: l1, Σ|error| (Qiu et al.'s), or l2, Σ error², of "
        "each tensor; or output, the squared error an activation's format leaves at the "
        "network's output, the later layers in float [output in the dynamic scheme, else l1]",
    )
    q.add_argument(
        "--rounding",
        choices=("nearest", "gptq"),  # quantizer.ROUNDINGS
        help="integer weights: nearest, or gptq, chosen against each layer's output error "
        "on the calibration set (the same formats) [nearest]",
    )
    q.add_argument(
        "--calib", type=images, metavar="N", help="calibration images [all the dataset provides]"
    )
    q.add_argument(
        "--config",
        metavar="JSON",
        help="per-layer formats to re-apply (an edited .fxq or a config JSON)",
    )
    q.add_argument("-o", "--output", required=True, metavar="OUT.fxq")
    q.set_defaults(func=run)


def run(args) -> int:
    import torch.nn as nn

    from ..quant import artifact, data, frontend, quantizer, report

    progress = not args.quiet
    t0 = time.monotonic()
    out = Path(args.output)
    check_output(out, (".fxq",), "the output")
    artifact.check_destination(out)  # before the work: both names free, directory writable
    config = None
    if args.config:
        config = quantizer.Config.from_json(artifact.read_json(args.config), args.config)
    widths = quantizer.Widths(args.bits, args.conv_bits, args.fc_bits)
    model, default_ds, prov = load_graph(
        args.model,
        args.weights,
        args.input_shape,
        trust_pickle=args.trust_pickle,
        timeout=args.timeout,
    )
    ds_spec = args.data or default_ds
    if ds_spec is None:
        raise FxpgaError(
            f"--data is required for model '{args.model}' (digits, digits16, noise:CxHxW or "
            f"file.npz)"
        )
    ds = data.load(ds_spec)
    if isinstance(model, nn.Module):
        with frontend.time_limit(args.timeout, f"tracing {args.model}"):
            graph = frontend.from_module(model, ds.sample_shape)
    else:
        graph = model
    if ds.sample_shape != graph.input_shape:
        raise FxpgaError(
            f"dataset {ds.name} has samples of shape {ds.sample_shape}, the model "
            f"takes {graph.input_shape}"
        )
    ds.check_labels(graph.output_shape)
    x_calib = ds.calib(args.calib)
    if ds.note:
        info(args, f"note: {ds.note}")
    info(
        args,
        f"quantizing {args.model}: {len(graph.nodes)} layers, {args.scheme} scheme, "
        f"{widths.act}-bit activations, conv/fc weights {widths.conv_w}/{widths.fc_w} "
        f"bits, {len(x_calib)} calibration images",
    )
    qm = quantizer.quantize_model(
        graph,
        x_calib,
        widths,
        scheme=args.scheme,
        config=config,
        progress=progress,
        unsigned=args.unsigned,
        input_unsigned=args.input_unsigned,
        bias_correction=args.bias_correction,
        per_channel=args.per_channel,
        objective=args.objective,
        rounding=args.rounding,
    )
    acc, summary = report.evaluate(qm, ds)
    qm.provenance = {
        **prov,
        "model_sha256": graph_digest(graph),
        "dataset": ds_spec,
        "dataset_sha256": ds.digest(),
        "calib_images": len(x_calib),
        "widths": {"act": widths.act, "conv_w": widths.conv_w, "fc_w": widths.fc_w},
        "config": args.config,
        "fxpga": __version__,
    }
    acc = {"dataset": ds_spec, "split": "test", "images": len(ds.x_test), **acc}
    artifact.save(qm, out, extra={"accuracy": acc})
    print(report.layer_table(qm))
    print(report.weight_formats_line(qm))
    print(summary)
    for x, part in ((x_calib, "calibration set"), (ds.x_test, "test split")):
        clipped = report.input_clipping_line(qm, x, f"{ds.name}'s {part}")
        if clipped:
            print(clipped)
    if graph.host_tail:
        print(f"note: {report.host_tail_line(graph)}")
    refusal = engine_refusal(qm)
    if refusal:
        print(f"note: the engine will not run this model: {refusal}")
    print(f"wrote {out} and {artifact.tensors_path(out).name} ({time.monotonic() - t0:.1f} s)")
    return 0


def engine_refusal(qm) -> str | None:
    """Why ``fxpga compile`` would refuse ``qm`` whatever the lanes and memories (its ops,
    formats and widths), or None."""
    from ..errors import FxpgaError
    from ..hw import compiler

    try:
        compiler.check_ops(qm)
        compiler.EngineConfig.for_model(qm)
    except FxpgaError as e:
        return str(e)
    return None
