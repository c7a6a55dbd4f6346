"""``fxpga train``: retrain a built-in model from its bundled data with the fixed seed, and
say how the result differs from the weights fxpga ships."""

from __future__ import annotations

import time
from pathlib import Path

from .common import bounded, check_output


def add(sub, common):
    from ..quant import zoo

    t = sub.add_parser(
        "train",
        parents=[common],
        help="retrain a built-in model and compare it with its shipped weights",
        description="Train built-in model NAME from scratch on its bundled dataset with the "
        "fixed seed, on one thread, and write its state_dict as FILE.npz with a manifest "
        "FILE.json (command, seed, epochs, torch version, date, float top-1, sha256). Prints "
        "the float top-1 of both weight sets and the largest weight difference. "
        "`fxpga quantize NAME --weights FILE.npz` uses the result.",
    )
    t.add_argument("name", metavar="NAME", choices=tuple(zoo.BUILTIN), help=", ".join(zoo.BUILTIN))
    t.add_argument(
        "--epochs",
        type=bounded(1, zoo.MAX_EPOCHS, "epochs"),
        help="training epochs [the model's default]",
    )
    t.add_argument("-o", "--output", required=True, metavar="FILE.npz")
    t.set_defaults(func=run)


def run(args) -> int:

    from ..quant import data, zoo

    out = Path(args.output)
    check_output(out, (".npz",), "the weights file")
    _, ds_name, default_epochs = zoo.BUILTIN[args.name]
    epochs = args.epochs or default_epochs
    t0 = time.monotonic()
    model = zoo.train(args.name, epochs, progress=not args.quiet)
    ds = data.load(ds_name)
    acc = zoo.float_accuracy(model, ds.x_test, ds.y_test)
    cmd = f"fxpga train {args.name} --epochs {epochs} -o {out.name}"
    zoo.save_state(
        model,
        out,
        {
            "model": args.name,
            "command": cmd,
            "seed": zoo.SEED,
            "epochs": epochs,
            "dataset": ds_name,
            "float_top1_test": acc,
            "test_images": len(ds.y_test),
        },
    )
    n = len(ds.y_test)
    print(f"{args.name}: trained {epochs} epochs in {time.monotonic() - t0:.1f} s")
    print(f"float top-1 on {ds.name} test ({n} images): {100 * acc:.1f}%")
    if zoo.weights_path(args.name).is_file():
        _compare(model, args.name, ds)
    else:
        print(f"no shipped weights for {args.name} to compare with")
    print(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


def _compare(model, name: str, ds):
    """How ``model`` differs from ``name``'s shipped weights: top-1, max |Δw|, predictions."""
    import numpy as np

    from ..quant import zoo

    shipped, _ = zoo.builtin(name)
    ref = zoo.float_accuracy(shipped, ds.x_test, ds.y_test)
    mine = model.state_dict()
    dmax, where = max(
        (float((mine[k] - v).abs().max()), k)
        for k, v in shipped.state_dict().items()
        if v.is_floating_point()
    )
    agree = float(np.mean(zoo.predict(model, ds.x_test) == zoo.predict(shipped, ds.x_test)))
    print(f"shipped weights: float top-1 {100 * ref:.1f}%")
    if dmax:
        print(f"largest |Δw| against the shipped weights: {dmax:.3g} ({where})")
    else:
        print("largest |Δw| against the shipped weights: 0 (every tensor identical)")
    print(f"predictions agree with the shipped model's on {100 * agree:.1f}% of the test images")
