"""The pre-synthesis fit check: resource estimates and refusals before any tool runs."""

import dataclasses
import re

import pytest

from fxpga.boards import build as boards
from fxpga.boards.fit import blocks, check_fit, estimate
from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw.compiler import EngineConfig, compile_model
from fxpga.quant import artifact


def test_block_counts():
    assert blocks("ice40", 256, 8) == 1 and blocks("ice40", 176, 32) == 2
    assert blocks("ice40", 16, 8) == 0 and blocks("ecp5", 64, 24) == 0
    assert blocks("ecp5", 745, 8) == 1 and blocks("ecp5", 4096, 8) == 2


@pytest.mark.parametrize(
    "lanes,store,family,bram,dsp",
    [  # the block RAMs and multipliers nextpnr reported for these digits-cnn builds
        (8, "spram", "ice40", 7, 8),
        (24, "bram", "ecp5", 25, 24),
        (128, "bram", "ecp5", 129, 128),
    ],
)
def test_estimate_matches_builds(digits_q8, lanes, store, family, bram, dsp):
    prog = compile_model(digits_q8, EngineConfig.for_model(digits_q8, lanes, weight_store=store))
    est = estimate(prog, family)
    cells = {"ice40": ("ICESTORM_RAM", "ICESTORM_DSP"), "ecp5": ("DP16KD", "MULT18X18D")}[family]
    assert (est[cells[0]][0], est[cells[1]][0]) == (bram, dsp)


@pytest.mark.parametrize(
    "board,lanes,message",
    [
        ("orangecrab-25f", 32, r"does not fit orangecrab-25f: needs 32 MULT18X18D \(32 lanes"),
        ("icebreaker", 16, r"SPRAM weights \(iCE40UP5K\) hold at most 8 lanes"),
    ],
)
def test_oversized_engine_fails_before_synthesis(
    digits_q8, tmp_path, capsys, board, lanes, message
):
    artifact.save(digits_q8, tmp_path / "d.fxq")
    out = tmp_path / "b"
    code = main(
        ["build", str(tmp_path / "d.fxq"), "--board", board, "--lanes", str(lanes), "-o", str(out)]
    )
    _, err = capsys.readouterr()
    assert code == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.fxq", "d.fxq.npz"]  # no build dir


def test_too_many_weights_per_lane_for_spram(digits_q8):
    prog = compile_model(digits_q8, EngineConfig.for_model(digits_q8, 2, weight_store="spram"))
    prog = dataclasses.replace(prog, wmem=[[0] * 20_000] * 2)
    with pytest.raises(
        boards.FxpgaError,
        match=r"20,000 weights per lane at 2 lanes, its SPRAM holds 16,384 per lane \(try more",
    ):
        boards.check_fit(prog, "icebreaker", "ice40", boards.BOARDS["icebreaker"].available)


def test_the_average_divider_counts_its_multipliers():
    """EngineConfig.avg_divide adds a (data_bits + 10) x (data_bits + 19)-bit unsigned
    multiplier per post-processing lane: 1 x 2 MULT18X18D, 2 x 2 SB_MAC16 at 8 bits, as
    yosys maps it (tests/test_synth.py)."""
    from test_hw import any_window_net, quantized

    qm, _ = quantized(*any_window_net(), 9)
    prog = compile_model(qm, EngineConfig(lanes=8, post_lanes=2, avg_divide=True))
    assert estimate(prog, "ecp5")["MULT18X18D"][0] == 8 + 2 * 2
    assert estimate(prog, "ice40")["ICESTORM_DSP"][0] == 8 + 2 * 4


def test_boards_narrow_the_engine_to_what_they_hold():
    """DS-CNN on the boards. With the average divider, a board whose multipliers cannot
    also hold one divider per post-processing lane takes fewer post-processing lanes (its
    25x5 average on the OrangeCrab's 28 and the ULX3S's 156 MULT18X18D). Its depthwise
    layers want a feature-map bank per lane, as many as its 64 channels divide: the
    OrangeCrab's 24 lanes get 8, with the read registers that build needs (64 banks would not
    fit its DP16KD); the ULX3S takes at most 8, as its larger bank counts did not route.
    Both read the banks through registers (the words fan out to the lanes). On the
    iCEBreaker its 8,000-value maps would take 32 of the 30 EBR: they go to two SPRAMs,
    with 4 lanes' weights in the other two, two banks a word."""
    import dataclasses

    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("ds-cnn")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(16))
    for name, lanes, post, banks in (("orangecrab-25f", 24, 2, 8), ("ulx3s-85f", 128, 8, 8)):
        b = boards.board(name)
        cfg = b.engine_config(qm)
        assert (cfg.lanes, cfg.post_lanes, cfg.avg_divide, cfg.depthwise) == (lanes, post, 1, 1)
        assert (cfg.banks, cfg.fmap_read_reg) == (banks, True)
        est = estimate(compile_model(qm, cfg), b.family)
        assert est["MULT18X18D"][0] <= b.available["MULT18X18D"] < lanes + 2 * post * 2
        assert est["DP16KD"][0] <= b.available["DP16KD"]
    ib = boards.board("icebreaker")
    cfg = ib.engine_config(qm)
    assert (cfg.lanes, cfg.fmap_store, cfg.weight_store, cfg.banks) == (4, "spram", "spram", 2)
    est = check_fit(compile_model(qm, cfg), ib.name, ib.family, ib.available)
    assert est["ICESTORM_SPRAM"][0] == 4 and est["ICESTORM_RAM"][0] <= 30
    with pytest.raises(FxpgaError, match=r"needs \d+ ICESTORM_RAM \(feature maps 32"):
        check_fit(compile_model(qm, ib.engine_config(qm, 8)), ib.name, ib.family, ib.available)
    oc = boards.board("orangecrab-25f").engine_config(qm)
    more = compile_model(qm, dataclasses.replace(oc, lanes=64, fmap_banks=64))
    assert estimate(more, "ecp5")["DP16KD"][0] > 56


def test_boards_take_the_most_lanes_that_fit():
    """The FC autoencoder on the ULX3S (biases in LUT RAM): at its default 128 lanes, 2,184
    weights a lane take two DP16KD each (259 in all, of 208), but three a pair packed into
    16-bit words (EngineConfig.weight_pack): 195, which the board takes. A board without
    packing halves the lanes until they fit: at 64, 4,240 a lane take three DP16KD each (211
    in all); at 32, 8,352 take five (171); build says why. Lanes asked for are not
    narrowed."""
    import dataclasses

    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("fc-ae")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(16))
    b = boards.board("ulx3s-85f")
    cfg = b.engine_config(qm)
    prog = compile_model(qm, cfg)
    assert (cfg.lanes, cfg.weight_pack, prog.wmem_depth) == (128, 2, 2184)
    est = check_fit(prog, b.name, b.family, b.available)
    assert est["DP16KD"][0] == 195 and "weights 192" in est["DP16KD"][1]
    assert not any("most that fit" in n for n in boards.engine_notes(qm, b, prog, None))
    unpacked = dataclasses.replace(cfg, weight_pack=1)
    with pytest.raises(FxpgaError, match=r"needs 259 DP16KD \(weights 256,"):
        check_fit(compile_model(qm, unpacked), b.name, b.family, b.available)
    nopack = dataclasses.replace(b, weight_pack=1)
    with pytest.raises(FxpgaError, match=r"needs 211 DP16KD \(feature maps 16, weights 192,"):
        check_fit(compile_model(qm, nopack.engine_config(qm, 64)), b.name, "ecp5", b.available)
    cfg = nopack.engine_config(qm)
    prog = compile_model(qm, cfg)
    assert (cfg.lanes, cfg.weight_pack, prog.wmem_depth) == (32, 1, 8352)
    assert estimate(prog, "ecp5")["DP16KD"][0] == 171
    notes = boards.engine_notes(qm, nopack, prog, None)
    assert any(n.startswith("32 lanes, the most that fit: at 128 it does not fit") for n in notes)
    assert not any("most that fit" in n for n in boards.engine_notes(qm, nopack, prog, 32))
