"""Which built-in model fits which board: on-chip memory only, before any synthesis.

    python bench/fit.py          # prints the table and updates docs/RESULTS.md

Per model (8-bit dynamic fixed point, 8-bit weights): its weights and the peak of its live
feature maps (a scratchpad placed by liveness, the least any engine can hold them in), and
what the engine's two feature-map buffers take (the compiler places every map in one of
them by liveness; both are as deep as the deeper), against the board's block RAM. Where
the engine runs the model, the exact count of block RAMs and multipliers its engine for
that board takes (``boards.fit``, which predicts yosys's memory mapping); where it does
not, the layer it lacks.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, markdown_table, update_section  # noqa: E402

from fxpga.boards import build as boards  # noqa: E402
from fxpga.boards import fit  # noqa: E402
from fxpga.errors import FxpgaError  # noqa: E402
from fxpga.hw import compiler  # noqa: E402
from fxpga.quant import data, frontend, ir, quantizer, zoo  # noqa: E402

BLOCK_BYTES = {"ICESTORM_RAM": 512, "DP16KD": 2048}  # 8-bit words per block RAM
SPRAM_BYTES = 32 * 1024


def peak_live(graph: ir.Graph) -> int:
    """Values held at once when every tensor lives from its producer to its last reader."""
    last = {t: k for k, ts in graph.last_use().items() for t in ts}
    sizes = {ir.INPUT: math.prod(graph.input_shape)}
    born = {ir.INPUT: 0}
    peak = 0
    for k, n in enumerate(graph.nodes):
        sizes[n.name], born[n.name] = math.prod(n.out_shape), k
        live = sum(s for t, s in sizes.items() if born[t] <= k <= last.get(t, len(graph.nodes)))
        peak = max(peak, live)
    return peak


def board_memory(b: boards.Board) -> tuple[int, str]:
    cell = fit.BRAM_CELL[b.family]
    n = b.available.get(cell, 0)
    total, what = n * BLOCK_BYTES[cell], f"{n} {cell}"
    spram = b.available.get("ICESTORM_SPRAM", 0)
    if spram:
        total += spram * SPRAM_BYTES
        what += f" + {spram} SPRAM"
    return total, what


def main() -> int:
    rows, notes = [], []
    for name in zoo.BUILTIN_NAMES:
        model, ds_name = zoo.builtin(name)
        ds = data.load(ds_name)
        g = frontend.from_module(model, ds.sample_shape)
        qm = quantizer.quantize_model(g, ds.calib(64), quantizer.Widths(8))
        weights = sum(n.weight.size for n in g.weighted())
        live = peak_live(g)
        try:
            compiler.check_ops(qm)
            lacks = None
        except FxpgaError as e:
            lacks = str(e).split(": ", 1)[-1]
        buffers, prog = "-", None
        if not lacks:
            prog = compiler.compile_model(qm, compiler.EngineConfig.for_model(qm, 8))
            buffers = f"{2 * prog.fmap_depth / 1024:,.1f}"
        row = [name, f"{weights / 1024:,.1f}", f"{live / 1024:,.1f}", buffers]
        for bname, b in boards.BOARDS.items():
            mem, _ = board_memory(b)
            need = weights + (live if lacks else 2 * prog.fmap_depth)  # the engine's, if it runs
            if need > mem:
                row.append(f"no: {need / 1024:,.0f} KB > {mem / 1024:,.0f} KB")
                continue
            if lacks:
                row.append(f"memory ok ({100 * need / mem:.0f}%); engine: not yet")
                continue
            prog = None
            try:
                prog = compiler.compile_model(qm, b.engine_config(qm))
                est = fit.check_fit(prog, bname, b.family, b.available)
                cell = fit.BRAM_CELL[b.family]
                dsp = fit.DSP_CELL[b.family]
                lanes = prog.config.lanes
                row.append(
                    f"**yes**{f' at {lanes} lanes' if lanes != b.lanes else ''}: "
                    f"{est[cell][0]}/{b.available[cell]} {cell}, "
                    f"{est[dsp][0]}/{b.available[dsp]} {dsp}"
                )
            except FxpgaError as e:
                why = str(e).split("needs ", 1)[-1].split("; try")[0]
                row.append(f"no: needs {why}")
        rows.append(row)
        if lacks:
            notes.append(f"- {name}: {lacks}")
    header = [
        "model",
        "weights KB",
        "peak live maps KB",
        "engine's 2 buffers KB",
        *(f"{b.name} ({board_memory(b)[1]})" for b in boards.BOARDS.values()),
    ]
    table = markdown_table(header, rows)
    print(table)
    print("\n".join(notes))
    body = (
        "## Fit: which model fits which board\n\n"
        f"Command: `python bench/fit.py`. Machine: {machine()}.\n\n"
        'On-chip memory only, 8-bit activations and weights, before synthesis. "peak live '
        'maps": the feature maps held at once when each lives from its producer to its last '
        "reader (what a liveness-placed scratchpad needs); the engine's two buffers hold them "
        "placed by liveness (the compiler's allocation; both buffers as deep as the deeper). "
        "A board cell says "
        '"no" where weights and maps (the engine\'s buffers where it runs the model, else the '
        "peak live maps) together exceed its block RAM (and, on the "
        'iCEBreaker, its SPRAM, which can hold either), "not yet" where they fit but the '
        "engine lacks a layer, and otherwise what "
        "the board's engine takes (`boards.fit`, which predicts yosys's memory mapping: "
        "weights in one bank per lane, so a model can overflow a board whose total memory "
        "would hold it), at the board's default lanes or, where those do not fit, the most "
        "that do.\n\n"
        f"{table}\n\nWhat the engine lacks, per model (the first layer it cannot run):\n\n"
        + "\n".join(notes)
        + "\n"
    )
    update_section("fit", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
