"""The format search: argmin properties, static baseline, widths, config overrides, targets."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from fxpga.errors import FxpgaError
from fxpga.quant import frontend, golden, quantizer
from fxpga.quant.qformat import QFormat, dequantize, quantize, requantize

WIDE = range(-40, 60)  # far wider than the search window


def test_weight_fl_is_the_global_argmin(digits_q8):
    for la in digits_q8.layers:
        if la.w_fmt is None:
            continue
        errs = {
            fl: quantizer.quantization_error(la.node.weight, QFormat(la.w_fmt.bits, fl))
            for fl in WIDE
        }
        assert errs[la.w_fmt.fl] == min(errs.values()), la.name


def test_output_fl_is_the_greedy_argmin(digits_q8, digits_graph, digits):
    """Re-derive each fl_out with earlier layers fixed, over a much wider window."""
    qm = digits_q8
    ref = digits_graph.float_forward(digits.x_calib, keep=True)
    ints = golden.run(qm, digits.x_calib, keep=True)
    names = [la.name for la in qm.layers]
    for i, la in enumerate(qm.layers):
        if la.w_fmt is None:
            continue
        relu = i + 1 < len(names) and qm.layers[i + 1].op == "relu"
        y = np.maximum(ref[la.name], 0) if relu else ref[la.name]
        acc = golden.accumulate(la, ints["input" if i == 0 else names[i - 1]])
        acc_fl = la.in_fmt.fl + la.w_fmt.fl

        def err(fl, acc=acc, y=y, relu=relu, acc_fl=acc_fl, bits=la.out_fmt.bits):
            q = requantize(acc, acc_fl - fl, bits)
            q = np.maximum(q, 0) if relu else q
            return float(np.abs(y - dequantize(q, fl)).sum())

        errs = {fl: err(fl) for fl in WIDE}
        assert errs[la.out_fmt.fl] == min(errs.values()), la.name


def test_input_fl_is_the_argmin(digits_q8, digits):
    errs = {fl: quantizer.quantization_error(digits.x_calib, QFormat(8, fl)) for fl in WIDE}
    assert errs[digits_q8.input_fmt.fl] == min(errs.values())


def test_static_uses_one_fl_per_kind(digits_graph, digits):
    qm = quantizer.quantize_model(
        digits_graph, digits.x_calib, quantizer.Widths(8), scheme="static"
    )
    w_fls = {la.w_fmt.fl for la in qm.layers if la.w_fmt}
    a_fls = {la.out_fmt.fl for la in qm.layers} | {qm.input_fmt.fl}
    assert len(w_fls) == 1 and len(a_fls) == 1


def test_conv_fc_widths(digits_graph, digits):
    qm = quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(8, 8, 4))
    for la in qm.layers:
        if la.w_fmt:
            assert la.w_fmt.bits == (8 if la.op == "conv" else 4)
            assert la.w.min() >= la.w_fmt.qmin and la.w.max() <= la.w_fmt.qmax
            assert la.out_fmt.bits == 8


def test_negative_fl_is_allowed():
    """Large activations need fl < 0: 8-bit outputs near 1000 get fl = -3."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    lin.weight.data.fill_(100.0)
    lin.bias.data.zero_()
    g = frontend.from_module(nn.Sequential(lin), (4,))
    x = np.abs(np.random.default_rng(0).standard_normal((64, 4))) + 1
    qm = quantizer.quantize_model(g, x, quantizer.Widths(8))
    assert qm.layers[0].out_fmt.fl < 0 and qm.layers[0].w_fmt.fl < 0


def test_config_fixes_and_researches(digits_graph, digits, digits_q8):
    cfg = quantizer.Config.from_json(
        {
            "input": {"bits": 8, "fl": 3},
            "layers": {
                "conv1": {"weight": {"bits": 6, "fl": 4}, "output": {"bits": 10}},
                "fc2": {"weight": {"bits": 5}},
            },
        },
        "cfg.json",
    )
    qm = quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(8), config=cfg)
    assert qm.input_fmt == QFormat(8, 3)
    assert qm["conv1"].w_fmt == QFormat(6, 4)
    assert qm["conv1"].out_fmt.bits == 10 and qm["relu"].out_fmt.bits == 10
    assert qm["conv2"].in_fmt.bits == 10
    fc2 = qm["fc2"]
    assert fc2.w_fmt.bits == 5
    errs = {fl: quantizer.quantization_error(fc2.node.weight, QFormat(5, fl)) for fl in WIDE}
    assert errs[fc2.w_fmt.fl] == min(errs.values())


def test_config_from_an_fxq_reproduces_it(digits_graph, digits, digits_q8, tmp_path):
    from fxpga.quant import artifact

    artifact.save(digits_q8, tmp_path / "m.fxq")
    cfg = quantizer.Config.from_json(artifact.read_json(tmp_path / "m.fxq"), "m.fxq")
    # any width would do: the config fixes every format
    qm = quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(4), config=cfg)
    for a, b in zip(qm.layers, digits_q8.layers, strict=True):
        assert (a.in_fmt, a.w_fmt, a.out_fmt) == (b.in_fmt, b.w_fmt, b.out_fmt)
        if a.w is not None:
            np.testing.assert_array_equal(a.w, b.w)


@pytest.mark.parametrize(
    "obj,msg",
    [
        (
            {"layers": {"nope": {"weight": {"bits": 8}}}},
            r"^cfg: unknown layer 'nope' \(layers: conv1",
        ),
        ({"layers": {"relu": {"output": {"bits": 8}}}}, r"layer 'relu' is a relu, which keeps"),
        (
            {"layers": {"conv1": {"weight": {"bits": 1}}}},
            r"layer 'conv1' weight: bits must be in 2",
        ),
        ({"layers": {"conv1": {"weight": {"bits": 8, "fl": 1.5}}}}, r"fl must be an integer"),
        ({"layers": {"conv1": {"weight": {"fl": 3}}}}, r"fl given without bits"),
        ({"layers": {"conv1": {"weight": {"bits": 8, "fl": 500}}}}, r"fl=500 is outside"),
        ({"layers": {"conv1": {"wieght": {"bits": 8}}}}, r"unknown key\(s\) wieght"),
        ({"layers": {"conv1": {"weight": {"bits": 8, "frac": 2}}}}, r"unknown key\(s\) frac"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_config_errors(obj, msg, digits_graph, digits):
    with pytest.raises(FxpgaError, match=msg):
        cfg = quantizer.Config.from_json(obj, "cfg")
        quantizer.quantize_model(digits_graph, digits.x_calib[:4], config=cfg)


def test_bad_calibration(digits_graph):
    with pytest.raises(FxpgaError, match="calibration set is empty"):
        quantizer.quantize_model(digits_graph, np.zeros((0, 1, 8, 8)))
    with pytest.raises(FxpgaError, match=r"shape \(1, 4, 4\), the model expects \(1, 8, 8\)"):
        quantizer.quantize_model(digits_graph, np.zeros((3, 1, 4, 4)))
    with pytest.raises(FxpgaError, match=r"--bits: bits must be in 2\.\.32, not 33"):
        quantizer.Widths(33)


def test_quantize_saturates_and_rounds_like_the_docs():
    fmt = QFormat(4, 1)  # step 0.5, range [-4, 3.5]
    np.testing.assert_array_equal(
        quantize(np.array([-10, -4.25, 0.25, -0.25, 3.74, 99]), fmt), [-8, -8, 1, 0, 7, 7]
    )


def test_digits_accuracy_targets(digits_graph, digits):
    """Issue targets: 16-bit dynamic equals float, 8-bit within 0.5 pt, 8/4 within 2 pt."""
    f = quantizer.float_accuracy(digits_graph, digits.x_test, digits.y_test)
    assert f >= 0.98
    acc = {}
    for key, w in {"16": (16,), "8": (8,), "8/4": (8, 8, 4)}.items():
        qm = quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(*w))
        acc[key] = quantizer.accuracy(qm, digits.x_test, digits.y_test)
    assert acc["16"] == f
    assert acc["8"] >= f - 0.005
    assert acc["8/4"] >= f - 0.02


def test_bias_correction_removes_each_channels_mean_error(digits_graph, digits, tmp_path):
    """With bias correction, every conv/fc channel's mean error on the calibration set (the
    float output minus the exact accumulator, on the quantized input the layer gets) is at
    most half an accumulator step; without it, some channel's is larger. The corrected model
    is an ordinary one: its .fxq loads and runs the same."""
    from fxpga.quant import artifact

    x = digits.calib(128)
    ref = digits_graph.float_forward(x, keep=True)

    def worst(qm):
        """The largest |mean error| of a channel, in accumulator steps."""
        ins = golden.run(qm, x, keep=True)
        out, prev = [], "input"
        for la in qm.layers:
            src = la.node.inputs[0] if la.node.inputs else prev
            prev = la.name
            if la.w is None:
                continue
            acc = golden.accumulate(la, ins[src]).astype(np.float64)
            fl = la.in_fmt.fl + la.w_fmt.fl
            err = np.mean(ref[la.name] - np.ldexp(acc, -fl), axis=(0, *range(2, acc.ndim)))
            out.append(float(np.max(np.abs(err)) * 2.0**fl))
        return max(out)

    plain = quantizer.quantize_model(digits_graph, x, scheme="qiu")
    fixed = quantizer.quantize_model(digits_graph, x, scheme="qiu", bias_correction=True)
    assert worst(fixed) <= 0.5 + 1e-9 < worst(plain)
    artifact.save(fixed, tmp_path / "bc.fxq")
    back = artifact.load(tmp_path / "bc.fxq")
    assert np.array_equal(golden.run(back, digits.x_test), golden.run(fixed, digits.x_test))


def test_schemes_set_the_options_and_arguments_win(digits_graph, digits):
    """dynamic (the default) is qiu with every option on; an option given explicitly wins."""
    x = digits.calib(64)
    default = quantizer.quantize_model(digits_graph, x)
    spelled = quantizer.quantize_model(
        digits_graph, x, scheme="qiu", unsigned=True, bias_correction=True, per_channel=True,
        objective="l2",
    )  # fmt: skip
    assert default.scheme == "dynamic" and spelled.scheme == "qiu"
    for a, b in zip(default.layers, spelled.layers, strict=True):
        assert (a.in_fmt, a.out_fmt, a.w_fmt, a.w_fls) == (b.in_fmt, b.out_fmt, b.w_fmt, b.w_fls)
        if a.b is not None:
            np.testing.assert_array_equal(a.b, b.b)
    assert any(not la.out_fmt.signed for la in default.layers)
    assert any(la.per_channel for la in default.layers if la.w_fmt is not None)
    plain = quantizer.quantize_model(digits_graph, x, unsigned=False, per_channel=False)
    assert all(la.out_fmt.signed and not la.per_channel for la in plain.layers)
    with pytest.raises(FxpgaError, match="unknown scheme 'fancy' \\(dynamic, qiu, static\\)"):
        quantizer.quantize_model(digits_graph, x, scheme="fancy")
