"""The MLPerf Tiny models on the boards: real bitstreams, fmax and latency per inference,
next to the published FPGA results.

    python bench/mlperf.py [--builds ds-cnn:orangecrab-25f ds-cnn:ulx3s-85f:64 ...]

Each build quantizes the built-in model (seeded weights: a hardware benchmark), builds it
with yowasp yosys + nextpnr at the board's clock, and reports resources, fmax, cycles per
inference (the compiler's exact cycle model, which the Verilator tests check), latency at
the board's clock and MAC utilization. Models or boards the engine cannot take yet are
listed with the reason (bench/fit.py has the memory side). The ULX3S builds take minutes.

The table in docs/RESULTS.md keeps one row per build: builds not named keep their last row.
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
from fxpga.errors import FxpgaError  # noqa: E402
from fxpga.quant import data, frontend, quantizer, zoo  # noqa: E402

# MODEL:BOARD[:LANES] (default: the board's lanes). DS-CNN's and ResNet-8's layers have 64
# channels at most, and MobileNetV1-0.25's cycles are in its early, narrow layers, so on the
# ULX3S 64 lanes run them in the cycles of 128 (or fewer) with a smaller engine. The FC
# autoencoder's 266k weights fit the ULX3S's 128 lanes two lanes a word (the board packs
# them). The table keeps the rows of these builds only
BUILDS = (
    "ds-cnn:icebreaker",
    "ds-cnn:orangecrab-25f",
    "ds-cnn:ulx3s-85f:64",
    "mobilenet-v1-0.25:ulx3s-85f:64",
    "resnet8:ulx3s-85f:64",
    "fc-ae:ulx3s-85f",
)
DEFAULT = ("ds-cnn:orangecrab-25f",)
# MLPerf Tiny v1.1 closed division (fpgaConvNet, Vivado) and Google's CFU Playground
ANCHORS = {
    "ds-cnn": "4.21 ms on a Cora-Z7 (XC7Z007S, 55 DSP); CFU Playground KWS: 25.2 M cycles "
    "on a UP5K-class SoC",
    "resnet8": "3.15 ms on a Zybo (XC7Z010, 78 DSP), 0.41 ms on a ZedBoard (211 DSP)",
    "mobilenet-v1-0.25": "9.49 ms on a ZedBoard (XC7Z020, 220 DSP)",
}
HEADER = [
    "model",
    "board",
    "lanes",
    "DSP",
    "BRAM",
    "LUT",
    "fmax MHz",
    "clock MHz",
    "cycles/inference",
    "latency at the clock",
    "MAC util %",
    "published",
    "built",
]


def kept(key: tuple[str, str, str]) -> bool:
    """Is this (model, board, lanes) row one of BUILDS's? (A build without lanes takes what
    the board gives the model: the iCEBreaker's DS-CNN has 4, not its default 8.)"""
    for spec in BUILDS:
        name, board, *lanes = spec.split(":")
        if (name, board) == key[:2] and (not lanes or lanes[0] == key[2]):
            return True
    return False


def previous_rows(path: Path = RESULTS) -> dict[tuple[str, str, str], list[str]]:
    text = path.read_text() if path.exists() else ""
    start = text.find("<!-- bench:mlperf -->")
    if start < 0:
        return {}
    rows = {}
    for line in text[start:].split("<!-- /bench:mlperf -->")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(HEADER) and cells[0] not in ("model", "---"):
            rows[(cells[0], cells[1], cells[2])] = cells
    return rows


def cell(rep, kinds) -> str:
    return next(
        (f"{v:,}/{rep.available.get(k, 0):,}" for k, v in rep.used.items() if k in kinds), ""
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", nargs="+", default=list(DEFAULT), choices=list(BUILDS))
    ap.add_argument(
        "--seed", type=int, default=1, help="nextpnr's placement seed (the row says so if not 1)"
    )
    args = ap.parse_args()
    new, ok = {}, True
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    for spec in args.builds:
        name, board, *lanes = spec.split(":")
        model, ds_name = zoo.builtin(name)
        ds = data.load(ds_name)
        qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(None))
        b = boards.board(board)
        clock = b.freq_hz / 1e6
        try:
            with tempfile.TemporaryDirectory() as d:
                rep = boards.build(
                    qm,
                    board,
                    Path(d) / board,
                    lanes=int(lanes[0]) if lanes else None,
                    seed=args.seed,
                    info=print,
                )
        except FxpgaError as e:
            print(f"{spec}: {e}")
            ok = False
            continue
        for line in rep.lines():
            print(line)
        if not rep.timing_met:  # (the build directory goes: its critical path, here)
            print("  critical path (last segments):")
            for seg in rep.critical_path:
                print(f"    {seg}")
        f = rep.fmax_mhz or 0.0
        ok &= rep.timing_met
        ms = rep.cycles / (clock * 1e3)
        new[(name, board, str(rep.lanes))] = [
            name,
            board,
            str(rep.lanes),
            cell(rep, ("ICESTORM_DSP", "MULT18X18D")),
            cell(rep, ("ICESTORM_RAM", "DP16KD")),
            cell(rep, ("ICESTORM_LC", "TRELLIS_COMB")),
            f"{f:.1f}"
            + ("" if rep.timing_met else " (**not met**)")
            + (f" (seed {args.seed})" if args.seed != 1 else ""),
            f"{clock:.0f}",
            f"{rep.cycles:,}",
            f"{ms:.2f} ms",
            f"{100 * rep.macs / (rep.lanes * rep.cycles):.1f}",
            ANCHORS.get(name, ""),
            today,
        ]
    # (the other rows as they are now: another run may have written since this one began)
    rows = {k: v for k, v in previous_rows().items() if kept(k)} | new
    table = markdown_table(HEADER, [rows[k] for k in sorted(rows)])
    print(table)
    body = (
        "## MLPerf Tiny on the boards\n\n"
        f"Command: `python bench/mlperf.py --builds MODEL:BOARD` (each row; last: {machine()}). "
        "Seeded weights (the data sets cannot be had here): these are hardware figures, "
        "bit-exact with the golden model on Verilator (tests/test_sim.py). Latency is at the "
        'board\'s clock, from the exact cycle count; "published" are MLPerf Tiny v1.1 '
        "closed results (fpgaConvNet, Vivado) and Google's CFU Playground.\n\n"
        f"{table}\n\n"
        "Depthwise layers read as many channels per cycle as the feature maps have banks "
        "(`EngineConfig.fmap_banks`: 8 on the OrangeCrab and the ULX3S, 2 on the iCEBreaker). "
        "ResNet-8's stacks have 16, 32 and 64 channels: at 64 lanes the first two split their "
        "input channels over the lanes the outputs leave idle (`EngineConfig.channel_split`), "
        "87.7% MAC utilization where it was 39.1% (499,148 cycles). MobileNetV1-0.25's early "
        "layers are narrow: its first conv alone (3 input channels, 8 output: 8 of 64 lanes "
        "busy) takes 22% of its cycles.\n\n"
        "The FC autoencoder's 266k weights are 2,184 a lane at 128 lanes, just over a "
        "DP16KD's 2,048 9-bit words: two blocks a lane would take 256 of the ULX3S's 208, "
        "so the board packs two lanes a 16-bit word (`EngineConfig.weight_pack`), three "
        "1024 x 18 blocks a pair (192). On the ULX3S the biases live in LUT RAM "
        "(`EngineConfig.bias_lutram`): a bias DP16KD's slow output was MobileNet's critical "
        "path.\n\n"
        "On the iCEBreaker DS-CNN's two 8,000-value feature maps exceed the UP5K's block "
        "RAM (they would take 32 of its 30 EBR), so each lives in an SPRAM "
        "(`EngineConfig.fmap_store`), and 4 lanes' 8-bit weights take the other two. The "
        "issue's other way, 4-bit weights in two SPRAMs for 8 lanes, costs too much "
        "accuracy: digits-dsnet with 8-bit activations and 4-bit weights makes 88.8% top-1 "
        "against 99.6% with 8-bit weights (float 99.8%; `fxpga quantize digits-dsnet "
        "--conv-bits 4 --fc-bits 4`); it is the convolutions that need "
        "the bits (4-bit fc weights alone: 99.6%).\n"
    )
    update_section("mlperf", body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
