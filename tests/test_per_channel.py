"""Per-output-channel weight formats: each channel's weights get their own fl, its bias and
requantizer shift follow it. The golden model's rule, the quantizer's choice, the .fxq, the
fake-quantized path, the report, the compiler's memory images. And the search's l2
objective."""

import json

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.quant import artifact, data, fakequant, frontend, golden, quantizer, report, zoo
from fxpga.quant.qformat import QFormat, dequantize, quantize, requantize, requantize_channels


@pytest.fixture(scope="module")
def resnet():
    model, ds_name = zoo.builtin("digits-resnet")
    ds = data.load(ds_name)
    return frontend.from_module(model, ds.sample_shape), ds


@pytest.fixture(scope="module")
def per_channel(resnet):
    g, ds = resnet
    return quantizer.quantize_model(g, ds.calib(64), scheme="qiu", per_channel=True)


def test_each_channel_is_requantized_by_its_own_shift(rng):
    acc = rng.integers(-(1 << 14), 1 << 14, size=(5, 3, 4, 4))
    shifts = np.array([6, 2, -1])
    got = requantize_channels(acc, shifts, 8)
    for c, s in enumerate(shifts):
        assert np.array_equal(got[:, c], requantize(acc[:, c], int(s), 8))
    assert np.array_equal(requantize_channels(acc, 4, 8), requantize(acc, 4, 8))


def test_each_channel_gets_the_fl_its_weights_alone_would(per_channel):
    layers = [la for la in per_channel.layers if la.w_fmt is not None]
    assert any(la.per_channel for la in layers)  # the BN-folded stem's ranges differ 5×
    for la in layers:
        if not la.per_channel:
            continue
        bits = la.w_fmt.bits
        assert la.w_fmt.fl == min(la.w_fls)
        assert max(la.w_fls) - min(la.w_fls) <= quantizer.MAX_CHANNEL_FL_SPREAD
        for o, (wt, fl) in enumerate(zip(la.node.weight, la.w_fls, strict=True)):
            errs = {
                f: quantizer.quantization_error(wt, QFormat(bits, f))
                for f in quantizer.candidates(wt, bits)
            }
            best = min(errs.values())
            # its own argmin, or the cap on the spread
            assert errs[fl] == best or fl == min(la.w_fls) + quantizer.MAX_CHANNEL_FL_SPREAD
            assert np.array_equal(la.w[o], quantize(wt, QFormat(bits, fl)))
        # bias and shift at each channel's accumulator scale
        acc_fl = la.in_fmt.fl + np.array(la.w_fls)
        assert np.array_equal(la.b, np.floor(np.ldexp(la.node.bias, acc_fl) + 0.5))
        assert list(la.shifts) == list(acc_fl - la.out_fmt.fl)
        with pytest.raises(ValueError, match="shift per channel"):
            la.shift  # noqa: B018


def test_per_channel_formats_are_closer_to_float(resnet, per_channel):
    g, ds = resnet
    layer = quantizer.quantize_model(g, ds.calib(64), scheme="qiu")
    x = ds.x_test[:200]
    want = g.float_forward(x).reshape(len(x), -1)

    def err(qm):
        got = dequantize(golden.run(qm, x).reshape(len(x), -1), qm.output_fmt.fl)
        return float(np.sum((got - want) ** 2))

    assert err(per_channel) < err(layer)


def test_the_fake_quantized_path_agrees_per_channel(resnet, per_channel):
    _, ds = resnet
    x = ds.x_test[:16]
    fake = fakequant.fake_run(per_channel, x)
    assert np.array_equal(fake, dequantize(golden.run(per_channel, x), per_channel.output_fmt.fl))


def test_a_per_channel_model_survives_its_fxq_and_its_edits_are_checked(
    resnet, per_channel, tmp_path
):
    _, ds = resnet
    artifact.save(per_channel, tmp_path / "p.fxq")
    back = artifact.load(tmp_path / "p.fxq")
    assert [la.w_fls for la in back.layers] == [la.w_fls for la in per_channel.layers]
    x = ds.x_test[:8]
    assert np.array_equal(golden.run(back, x), golden.run(per_channel, x))
    doc = json.loads((tmp_path / "p.fxq").read_text())
    k = next(i for i, la in enumerate(doc["layers"]) if isinstance(la.get("shift"), list))
    name = doc["layers"][k]["name"]

    def edited(change, msg):
        d = json.loads(json.dumps(doc))
        change(d["layers"][k])
        (tmp_path / "e.fxq").write_text(json.dumps(d))
        (tmp_path / "e.fxq.npz").write_bytes((tmp_path / "p.fxq.npz").read_bytes())
        with pytest.raises(FxpgaError, match=msg):
            artifact.load(tmp_path / "e.fxq")

    edited(lambda la: la["weight"]["fl"].pop(), rf"layer '{name}'.*fl \(one per output channel\)")
    edited(lambda la: la["shift"].__setitem__(0, 99), rf"layer '{name}'.*shift .* disagrees")
    edited(lambda la: la["weight"]["fl"].__setitem__(0, "x"), r"fl\[0\] must be an integer")
    # the formats re-applied as a --config give the same model
    cfg = quantizer.Config.from_json(doc, "p.fxq")
    again = quantizer.quantize_model(resnet[0], ds.calib(64), config=cfg)
    assert [la.w_fls for la in again.layers] == [la.w_fls for la in per_channel.layers]


def test_the_report_shows_the_channels_fl_range(per_channel):
    la = next(la for la in per_channel.layers if la.per_channel)
    assert la.w_fl_text == f"{min(la.w_fls)}..{max(la.w_fls)}"
    assert la.w_fl_text in report.layer_table(per_channel)
    n = sum(la.w_fmt is not None for la in per_channel.layers)
    k = sum(la.per_channel for la in per_channel.layers)
    line = report.weight_formats_line(per_channel)
    assert line.startswith(f"weights: one fl per output channel in {k} of {n}")


def test_the_engine_requantizes_each_channel_by_its_shift(resnet, per_channel, monkeypatch):
    """The compiler's memory images and fused ops (``run_program``) against golden; the
    hardware is tests/test_hw.py's."""
    _, ds = resnet
    cfg = compiler.EngineConfig.for_model(per_channel, lanes=8)
    assert cfg.channel_shifts
    prog = compiler.compile_model(per_channel, cfg)
    assert any(prog.bshift)
    xi = golden.quantize_input(per_channel, ds.x_test[:4])
    want = golden.run_int(per_channel, xi).reshape(len(xi), -1)
    for i in range(len(xi)):
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i])
    # the words the configuration port writes: a bias and its offset in 32 bits
    assert prog.bias_word_bits == cfg.acc_bits + compiler.CHANNEL_SHIFT_BITS <= 32
    assert [prog.split_bias_word(w) for w in prog.bias_words] == list(
        zip(prog.bmem, prog.bshift, strict=True)
    )
    with pytest.raises(FxpgaError, match="channel_shifts needs acc_bits <= 28"):
        compiler.EngineConfig(channel_shifts=True, acc_bits=32)
    # offsets wider than the bias word holds (the quantizer's cap keeps them within it)
    assert quantizer.MAX_CHANNEL_FL_SPREAD <= compiler.MAX_CHANNEL_SHIFT
    monkeypatch.setattr(compiler, "MAX_CHANNEL_SHIFT", 1)
    la = next(la for la in per_channel.layers if la.per_channel and np.ptp(la.shifts) > 1)
    with pytest.raises(FxpgaError, match=rf"layer '{la.name}''s channels' shifts span"):
        compiler.compile_model(per_channel, cfg)


def test_the_l2_objective_minimises_the_squared_error(resnet):
    g, ds = resnet
    x = ds.calib(64)
    qm = quantizer.quantize_model(g, x, objective="l2")

    def sq(fl):
        d = x - dequantize(quantize(x, QFormat(8, fl)), fl)
        return float(np.sum(d * d))

    errs = {fl: sq(fl) for fl in quantizer.candidates(x, 8)}
    assert sq(qm.input_fmt.fl) == min(errs.values())
    with pytest.raises(FxpgaError, match="unknown objective 'l3'"):
        quantizer.quantize_model(g, x, objective="l3")


def test_quantize_per_channel_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "p.fxq"
    args = ["quantize", "digits-resnet", "--per-channel", "--objective", "l2", "--calib", "64"]
    assert main([*args, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights: one fl per output channel in" in text
    assert "note: the engine will not run this model" not in text
    doc = json.loads(out.read_text())
    assert any(isinstance(la.get("weight", {}).get("fl"), list) for la in doc["layers"])
