"""Engine targets, in simulated cycles.

    python bench/engine.py [--images N]   # prints tables and updates docs/RESULTS.md

Targets: MAC utilization = MACs / (lanes × cycles) >= 90% on conv and FC layers whose channel
counts are multiples of `lanes`, >= 70% over the whole digits-cnn at lanes = 8; the compiler's
cycle estimate within 2% of measured cycles, per layer (measured in Amaranth's simulator).
digits-vgg (1.8M MACs) is measured whole at 8 and 32 lanes, one image each (~1 min each).
Writes docs/img/engine_lanes.png (digits-cnn cycles and utilization against lanes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from results import machine, markdown_table, update_section, write_image  # noqa: E402

from fxpga.hw import amsim, compiler  # noqa: E402
from fxpga.quant import data, frontend, golden, quantizer, zoo  # noqa: E402
from fxpga.report import plots  # noqa: E402

MODELS = (  # name, lane counts, images (None: --images)
    ("digits-cnn", (1, 3, 8, 16, 24, 32), None),
    ("digits-vgg", (8, 32), 1),
)


def measure(name, qm, xi, want, lanes, rows, summary) -> tuple[bool, int, float]:
    """Simulate ``xi`` on ``lanes`` lanes and add table rows: (targets met, cycles, util)."""
    ok = True
    prog = compiler.compile_model(qm, compiler.EngineConfig(lanes=lanes))
    t = time.perf_counter()
    got, cycles, per_op = amsim.run_engine(prog, xi, op_trace=True)
    dt = time.perf_counter() - t
    exact = bool(np.array_equal(got, want))
    ok &= exact
    measured = per_op[0]
    for op, est, meas in zip(prog.ops, prog.estimate, measured, strict=True):
        util = op.macs / (lanes * meas)
        multiple = op.O % lanes == 0
        err = 100 * (est - meas) / meas
        target = ">= 90%" if multiple else ""
        met = "" if not multiple else ("yes" if util >= 0.9 else "**no**")
        ok &= (not multiple or util >= 0.9) and abs(err) <= 2
        if name == "digits-cnn":
            rows.append(
                [
                    lanes,
                    op.name,
                    f"{op.O}",
                    f"{op.macs:,}",
                    f"{meas:,}",
                    f"{est:,}",
                    f"{err:+.2f}",
                    f"{100 * util:.1f}",
                    target,
                    met,
                ]
            )
    total = sum(measured)
    util = prog.total_macs / (lanes * total)
    if lanes == 8:
        ok &= util >= 0.7
    summary.append(
        [
            name,
            f"{lanes} ({prog.config.post_lanes})",
            f"{prog.total_macs:,}",
            f"{total:,}",
            f"{prog.total_cycles:,}",
            f"{100 * util:.1f}",
            ">= 70%" if lanes == 8 else "",
            f"yes ({len(xi)})" if exact else "**no**",
            f"{sum(cycles) / dt:,.0f}",
        ]
    )
    return ok, total, util


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2, help="digits-cnn images per lane count")
    args = ap.parse_args()
    rows, summary, ok, curve = [], [], True, []
    for name, lane_counts, images in MODELS:
        model, ds_name = zoo.builtin(name)
        ds = data.load(ds_name)
        graph = frontend.from_module(model, ds.sample_shape)
        qm = quantizer.quantize_model(graph, ds.x_calib, quantizer.Widths(8))
        xi = golden.quantize_input(qm, ds.x_test[: images or args.images])
        want = golden.run_int(qm, xi).reshape(len(xi), -1)
        for lanes in lane_counts:
            print(f"{name}: simulating {len(xi)} image(s) on {lanes} lanes", file=sys.stderr)
            met, total, util = measure(name, qm, xi, want, lanes, rows, summary)
            ok &= met
            if name == "digits-cnn":
                curve.append((lanes, total, util))
    per_layer = markdown_table(
        [
            "lanes",
            "op",
            "out ch",
            "MACs",
            "measured cycles",
            "estimate",
            "error %",
            "MAC util %",
            "target",
            "met",
        ],
        rows,
    )
    whole = markdown_table(
        [
            "model",
            "lanes (post_lanes)",
            "MACs",
            "measured cycles",
            "estimate",
            "MAC util %",
            "target",
            "bit-exact (images)",
            "Amaranth sim cycles/s",
        ],
        summary,
    )
    lanes, cycles, util = zip(*curve, strict=True)
    write_image(
        "engine_lanes.png",
        plots.lanes_sweep(list(lanes), list(cycles), list(util), "digits-cnn, measured"),
    )
    print(per_layer, "", whole, sep="\n")
    update_section(
        "engine",
        (
            f"## Engine cycles (8-bit dynamic)\n\n"
            f"Command: `python bench/engine.py --images {args.images}`. Machine: {machine()}.\n"
            f"Cycles measured in Amaranth's simulator from the first descriptor fetch to the last "
            f"write of each op; utilization = MACs / (lanes x cycles).\n\n{whole}\n\n"
            f"![cycles and MAC utilization against lanes](img/engine_lanes.png)\n\n"
            f"Per op (digits-cnn):\n\n{per_layer}\n"
        ),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
