"""Board builds: resources, fmax, latency and throughput for digits-cnn.

    python bench/boards.py [--boards icebreaker orangecrab-25f ulx3s-85f] [--lanes N ...]

Targets: fmax >= 40 MHz on iCEBreaker with all 8 DSPs busy (>= 0.32 GMAC/s peak, >= 3x
MARLANN's 4 MACs/cycle at 23-29 MHz); >= 120 MHz on OrangeCrab 25F with >= 24 lanes; >= 75 MHz
on ULX3S 85F with >= 128 lanes. Place and route of the 85F takes minutes.

The table in docs/RESULTS.md keeps one row per board: boards not named in --boards keep the
row (and date) of their last run.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import RESULTS, machine, markdown_table, update_section  # noqa: E402

from fxpga.boards import build as boards  # noqa: E402
from fxpga.quant import data, frontend, quantizer, zoo  # noqa: E402

TARGETS = {"icebreaker": (40.0, 8), "orangecrab-25f": (120.0, 24), "ulx3s-85f": (75.0, 128)}
HEADER = [
    "board",
    "lanes",
    "LUT (LC)",
    "FF",
    "DSP",
    "BRAM",
    "SPRAM",
    "fmax MHz",
    "target",
    "met",
    "cycles/image",
    "latency",
    "MAC util %",
    "GMAC/s achieved / peak",
    "built",
]


def previous_rows(path: Path = RESULTS) -> dict[str, list[str]]:
    """The boards table of docs/RESULTS.md as it stands, by board, if it has this header."""
    text = path.read_text() if path.exists() else ""
    if "<!-- bench:boards -->" not in text:
        return {}
    section = text.split("<!-- bench:boards -->", 1)[1].split("<!-- /bench:boards -->", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    if not lines or [c.strip() for c in lines[0].strip("|").split("|")] != HEADER:
        return {}
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[1:]]
    return {r[0]: r for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boards", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--lanes", nargs="+", type=int, help="per board, in --boards order")
    args = ap.parse_args()
    model, _ = zoo.builtin("digits-cnn")
    ds = data.digits()
    graph = frontend.from_module(model, ds.sample_shape)
    qm = quantizer.quantize_model(graph, ds.x_calib, quantizer.Widths(8))
    rows, ok = previous_rows(), True
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    for i, name in enumerate(args.boards):
        lanes = args.lanes[i] if args.lanes else None
        with tempfile.TemporaryDirectory() as d:
            rep = boards.build(
                qm, name, Path(d) / name, lanes=lanes, freq_mhz=TARGETS[name][0], info=print
            )
        f = rep.fmax_mhz or 0.0
        tf, tl = TARGETS[name]
        met = f >= tf and rep.lanes >= tl
        ok &= met
        lut = next(
            (
                f"{v:,}/{rep.available.get(k, 0):,}"
                for k, v in rep.used.items()
                if k in ("ICESTORM_LC", "TRELLIS_COMB")
            ),
            "",
        )
        ff = rep.used.get("TRELLIS_FF")
        dsp = next(
            (
                f"{v}/{rep.available.get(k, 0)}"
                for k, v in rep.used.items()
                if k in ("ICESTORM_DSP", "MULT18X18D")
            ),
            "",
        )
        ram = next(
            (
                f"{v}/{rep.available.get(k, 0)}"
                for k, v in rep.used.items()
                if k in ("ICESTORM_RAM", "DP16KD")
            ),
            "",
        )
        spram = rep.used.get("ICESTORM_SPRAM", "")
        lat = rep.cycles / (f * 1e6) if f else float("nan")
        rows[name] = [
            name,
            rep.lanes,
            lut,
            f"{ff:,}" if ff else "-",
            dsp,
            ram,
            spram or "-",
            boards.mhz(f, tf),
            f">= {tf:.0f} MHz, >= {tl} lanes",
            "yes" if met else "**no**",
            f"{rep.cycles:,}",
            f"{1e6 * lat:.0f} us",
            f"{100 * rep.macs / (rep.lanes * rep.cycles):.1f}",
            f"{rep.macs / lat / 1e9:.3f} / {rep.lanes * f / 1e3:.3f}",
            today,
        ]
        print("\n".join(rep.lines()))
    table = markdown_table(HEADER, [rows[b] for b in TARGETS if b in rows])
    print(table)
    update_section(
        "boards",
        (
            f"## Boards (digits-cnn, 8-bit dynamic; yowasp yosys 0.70 + nextpnr 0.11)\n\n"
            f"Command: `python bench/boards.py --boards BOARD` (each row; last: "
            f"`--boards {' '.join(args.boards)}`). Machine: {machine()}.\nEach build clocks "
            f"the engine from the board's PLL (or oscillator) at the target frequency; fmax is "
            f"nextpnr's for that clock; latency and GMAC/s are predicted at fmax from the "
            f"exact cycle count; MAC util = MACs / (lanes x cycles).\n\n"
            f"{table}\n"
        ),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
