"""Quantizer targets (issue 2): accuracy per scheme and width, search and golden-model speed.

    python bench/quant.py            # prints the tables and updates docs/RESULTS.md

Targets: 16-bit dynamic top-1 equal to float, 8-bit dynamic within 0.5 pt, 8/4 within 2 pt;
greedy search over 256 calibration images < 10 s on one core; golden model >= 5,000 images/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from results import machine, markdown_table, update_section  # noqa: E402

from fxpga.quant import data, frontend, golden, quantizer, zoo  # noqa: E402

ROWS = [  # label, widths (act, conv_w, fc_w), scheme, allowed drop in pt (None: reported only)
    ("16-bit dynamic", (16, 16, 16), "dynamic", 0.0),
    ("8-bit dynamic", (8, 8, 8), "dynamic", 0.5),
    ("8/4 dynamic (conv 8, fc 4)", (8, 8, 4), "dynamic", 2.0),
    ("8-bit static", (8, 8, 8), "static", None),
    ("6-bit dynamic", (6, 6, 6), "dynamic", None),
    ("4-bit dynamic", (4, 4, 4), "dynamic", None),
    ("16-bit static", (16, 16, 16), "static", None),
]


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    torch.set_num_threads(1)  # "on one core"
    model, _ = zoo.builtin("digits-cnn")
    ds = data.digits()
    graph = frontend.from_module(model, ds.sample_shape)
    f_acc = quantizer.float_accuracy(graph, ds.x_test, ds.y_test)

    rows, ok = [["float (folded BN)", "float64", f"{100 * f_acc:.2f}", "", "", ""]], True
    for label, w, scheme, drop in ROWS:
        qm = quantizer.quantize_model(graph, ds.x_calib, quantizer.Widths(*w), scheme=scheme)
        acc = quantizer.accuracy(qm, ds.x_test, ds.y_test)
        delta = 100 * (acc - f_acc)
        met = "" if drop is None else ("yes" if delta >= -drop - 1e-9 else "**no**")
        ok &= met != "**no**"
        fls = " ".join(f"{la.w_fmt.fl}/{la.out_fmt.fl}" for la in qm.layers if la.w_fmt)
        target = "" if drop is None else ("= float" if drop == 0 else f">= -{drop} pt")
        rows.append(
            [
                label,
                f"in {qm.input_fmt.fl}; {fls}",
                f"{100 * acc:.2f}",
                f"{delta:+.2f}",
                target,
                met,
            ]
        )

    calib = ds.x_calib[:256]
    t_search = best_of(lambda: quantizer.quantize_model(graph, calib, quantizer.Widths(8)), 3)
    qm8 = quantizer.quantize_model(graph, calib, quantizer.Widths(8))
    x = np.concatenate([ds.x_test] * 10)
    xi = golden.quantize_input(qm8, x)
    t_golden = best_of(lambda: golden.run_int(qm8, xi), 3)
    ips = len(x) / t_golden
    speed = [
        [
            "greedy search, 8-bit, 256 calibration images",
            f"{t_search:.2f} s",
            "< 10 s",
            "yes" if t_search < 10 else "**no**",
        ],
        [
            "golden model (int64 numpy), batch of 5,000",
            f"{ips:,.0f} images/s",
            ">= 5,000 images/s",
            "yes" if ips >= 5000 else "**no**",
        ],
    ]
    ok &= t_search < 10 and ips >= 5000

    acc_md = markdown_table(
        ["scheme", "fl_w/fl_out per conv/fc", "top-1 %", "vs float (pt)", "target", "met"], rows
    )
    speed_md = markdown_table(["what", "measured", "target", "met"], speed)
    print(acc_md, "\n", speed_md, sep="\n")
    body = (
        f"## Quantization (digits-cnn, {len(ds.y_test)} test images)\n\n"
        f"Command: `python bench/quant.py` (torch on 1 thread). Machine: {machine()}.\n\n"
        f"Dynamic fixed point after Qiu et al. (FPGA 2016): per-layer fl, greedy over 256 "
        f"calibration images; static: one fl for all weights, one for all activations.\n\n"
        f"{acc_md}\n\n{speed_md}\n"
    )
    update_section("quant", body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
