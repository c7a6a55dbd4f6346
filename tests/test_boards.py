"""Real bitstream builds (yowasp yosys + nextpnr). Deselect locally with -m 'not board'."""

import json

import pytest

from fxpga.boards import build as boards
from fxpga.boards import clocks
from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.quant import artifact

pytestmark = pytest.mark.board


def test_unknown_board():
    with pytest.raises(FxpgaError, match=r"unknown board 'de10' \(have: icebreaker"):
        boards.board("de10")


def test_icebreaker_bitstream(tmp_path, capsys):
    """digits-cnn, quantized as a user would (the default scheme: unsigned activations, a
    shift per channel), fits the UP5K with its weights in SPRAM (and no descriptor
    prefetch) and meets the board's default clock."""
    assert main(["quantize", "digits-cnn", "-o", str(tmp_path / "d.fxq"), "-q"]) == 0
    out = tmp_path / "ice"
    code = main(["build", str(tmp_path / "d.fxq"), "--board", "icebreaker", "-o", str(out), "-q"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert (out / "fxpga.bin").stat().st_size > 100_000
    lines = {ln.split()[0]: ln.split() for ln in stdout.splitlines() if ln.startswith("  ")}
    assert lines["ICESTORM_DSP"][1] == "8" and lines["ICESTORM_SPRAM"][1] == "4"
    assert "fxpga run loads them over the UART first" in stdout
    cfg = boards.board("icebreaker").engine_config(artifact.load(tmp_path / "d.fxq"))
    assert cfg.unsigned and cfg.channel_shifts


def test_timing_failure_is_an_error_unless_allowed(digits_q8, tmp_path, capsys):
    artifact.save(digits_q8, tmp_path / "d.fxq")
    out = tmp_path / "oc"
    code = main(
        ["build", str(tmp_path / "d.fxq"), "--board", "orangecrab-25f", "--lanes", "8",
         "--freq", "400", "-o", str(out), "-q"]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1 and "timing not met on orangecrab-25f" in err and "critical path" in err
    assert (out / "fxpga.bit").exists()  # the build is kept for inspection
    # fxpga report --build: the build's resources and fmax, its engine's cycles
    rep = json.loads((out / "build_report.json").read_text())
    page = tmp_path / "r.md"
    args = ["report", str(tmp_path / "d.fxq"), "--build", str(out), "--data", "digits"]
    assert main([*args, "-o", str(page), "-q"]) == 0
    md = page.read_text()
    assert f"| MULT18X18D | 8 | 28 | {100 * 8 / 28:.1f} |" in md
    assert f"| TRELLIS_COMB | {rep['used']['TRELLIS_COMB']:,} | 24,288 |" in md
    assert f"fmax {rep['fmax_mhz']:.1f} MHz for a 400.0 MHz clock" in md
    assert f"| total |  | {rep['macs']:,} | {rep['cycles']:,} |" in md


@pytest.mark.parametrize("name,fewest", [("icebreaker", 8), ("ulx3s-85f", 128)])
def test_fewest_lanes_as_fast(digits_q8, name, fewest):
    """Lanes compute output channels and digits-cnn's layers have at most 64, but on the
    ULX3S a conv narrower than the lanes splits its input channels over them
    (EngineConfig.channel_split): its 128 lanes are faster than 64; no fewer lanes are as
    fast as the iCEBreaker's 8."""
    from fxpga.hw.compiler import compile_model

    spec = boards.board(name)
    prog = compile_model(digits_q8, spec.engine_config(digits_q8))
    assert max(op.O for op in prog.ops) == 64
    assert boards.fewest_lanes_as_fast(digits_q8, spec, prog) == fewest
    fast = compile_model(digits_q8, spec.engine_config(digits_q8, fewest))
    assert fast.total_cycles == prog.total_cycles
    slower = compile_model(digits_q8, spec.engine_config(digits_q8, fewest // 2))
    assert slower.total_cycles > prog.total_cycles


def test_fewest_lanes_stops_where_fewer_do_not_fit():
    """digits-resnet's 75 KB of weights fit the iCEBreaker's SPRAM at 8 lanes and not at 4
    (a lane's bank holds 16K weights): 8 is the fewest, not an error."""
    from fxpga.hw.compiler import compile_model
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("digits-resnet")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(16))
    spec = boards.board("icebreaker")
    prog = compile_model(qm, spec.engine_config(qm))
    with pytest.raises(FxpgaError, match="weight bank .* the engine has 16384"):
        compile_model(qm, spec.engine_config(qm, 4))
    assert boards.fewest_lanes_as_fast(qm, spec, prog) == 8


def test_orangecrab_ds_cnn_bitstream(tmp_path, capsys):
    """MLPerf Tiny's DS-CNN (seeded weights) on the OrangeCrab's default engine: depthwise
    ops, the average divider in 2 post-processing lanes beside 24 MAC lanes (all 28
    MULT18X18D), timing met at 120 MHz, and its latency per inference reported."""
    fxq = tmp_path / "ds.fxq"
    assert main(["quantize", "ds-cnn", "--calib", "64", "-o", str(fxq), "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "oc"
    code = main(["build", str(fxq), "--board", "orangecrab-25f", "-o", str(out), "-q"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert (out / "fxpga.bit").stat().st_size > 100_000
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["lanes"] == 24 and rep["used"]["MULT18X18D"] == 28
    assert rep["fmax_mhz"] >= 120 and "predicted latency" in stdout
    assert "MULT18X18D" in stdout and "fmax" in stdout and "GMAC/s" in stdout
    assert "TRELLIS_COMB" in stdout
    # the 120 MHz PLL clock: the engine is reset through GSR (SGSR), and only the hold
    # counter and the release synchroniser, which must outlive GSR, are immune to it, beside
    # the engine's register copies (fanout.fd1s3ax instances: pipeline registers, no reset)
    netlist = json.loads((out / "fxpga.json").read_text())
    cells = next(m for m in netlist["modules"].values() if m["attributes"].get("top"))["cells"]
    immune = [
        n
        for n, c in cells.items()
        if c["type"] == "TRELLIS_FF" and c["parameters"].get("GSR") == "DISABLED"
    ]
    copies = [
        n
        for n in immune
        if n.startswith("top.engine.") and "fanout.py" in cells[n]["attributes"].get("src", "")
    ]
    assert copies  # the post-processor's bias address copies at 24 lanes
    immune = sorted(n.split("$")[0] for n in immune if n not in copies)
    hold_bits = clocks.HOLD.bit_length()
    assert immune == sorted(
        ["clocks.por_gsr0", "clocks.por_gsr1"] + [f"clocks.por_timer{i}" for i in range(hold_bits)]
    )
    assert [c["type"] for c in cells.values()].count("SGSR") == 1
