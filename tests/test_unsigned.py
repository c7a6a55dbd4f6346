"""Unsigned activation formats: values that cannot be negative (a ReLU's) use the whole word,
[0, 2^bits − 1]. The golden model's rules for them (docs/numerics.md), how the quantizer
chooses them, how a .fxq keeps them, the compiler's memory images of them."""

import dataclasses
import json

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.quant import artifact, data, frontend, golden, ir, quantizer, zoo
from fxpga.quant.qformat import QFormat, fl_fit, quantize, requantize
from fxpga.quant.qmodel import QLayer


def test_an_unsigned_format_holds_the_whole_word():
    u = QFormat(8, 4, signed=False)
    assert (u.qmin, u.qmax, repr(u)) == (0, 255, "U8.4")
    assert u.to_json() == {"bits": 8, "fl": 4, "signed": False}
    assert QFormat(8, 4).to_json() == {"bits": 8, "fl": 4}  # signed: as before
    assert list(quantize([-1.0, 0.03, 15.9, 16.0, 100.0], u)) == [0, 0, 254, 255, 255]
    assert fl_fit(15.9, 8, signed=False) == fl_fit(15.9, 9) == 4
    with pytest.raises(FxpgaError, match="signed must be true or false"):
        QFormat(8, 4, signed="no")


@pytest.mark.parametrize("s", [3, 0, -2])
def test_the_requantizer_saturates_unsigned_outputs_to_zero_and_the_top(s):
    acc = np.array([-(10**6), -9, -1, 0, 1, 7, 8, 100, 255 << max(s, 0), 10**6])
    got = requantize(acc, s, 8, signed=False)
    want = np.clip(np.floor(acc * 2.0**-s + 0.5), 0, 255)
    assert list(got) == list(want.astype(np.int64))


def test_an_add_counts_a_negative_operand_before_saturating_to_unsigned():
    """relu(a + b) with b negative: each operand keeps its sign (aligned to the signed word
    one bit wider) until the sum is saturated to [0, 255]."""
    node = ir.Add("add", inputs=("a", "b"), in_shape=(1,), out_shape=(1,))
    la = QLayer(
        node, QFormat(8, 5), QFormat(8, 6, signed=False), (0, 0), (0, 0),
        in_fmts=(QFormat(8, 5), QFormat(8, 6, signed=False)),
    )  # fmt: skip
    a = np.array([[-100], [-100], [127], [-128]])  # Q8.5: -3.125, ..., 3.97, -4
    b = np.array([[60], [255], [255], [0]])  # U8.6: 0.94, 3.98, 3.98, 0
    assert golden.step(la, a, b).ravel().tolist() == [0, 55, 255, 0]


@pytest.fixture(scope="module")
def resnet():
    model, ds_name = zoo.builtin("digits-resnet")
    ds = data.load(ds_name)
    return frontend.from_module(model, ds.sample_shape), ds


def test_the_outputs_a_relu_alone_reads_are_unsigned(resnet):
    g, ds = resnet
    qm = quantizer.quantize_model(g, ds.calib(32), unsigned=True, input_unsigned=True)
    fmt = {la.name: la.out_fmt for la in qm.layers}
    readers = g.consumers()
    for la in qm.layers:
        if la.node.has_weights or la.op in ("add", "concat"):
            only_relu = [r.op for r in readers[la.name]] == ["relu"]
            assert fmt[la.name].signed is not only_relu, la.name
    assert fmt["stacks.0.conv2"].signed  # read by the add
    assert not fmt["add"].signed and not qm.input_fmt.signed
    assert not fmt["stem.2"].signed  # the ReLU keeps its input's format
    # ReLU after an unsigned output changes nothing: the saturation did its work
    outs = golden.run(qm, ds.x_test[:8], keep=True)
    assert np.array_equal(outs["stem.0"], outs["stem.2"])
    assert outs["stem.0"].min() >= 0 and outs["stem.0"].max() <= 255
    signed = quantizer.quantize_model(g, ds.calib(32), scheme="qiu")
    assert all(la.out_fmt.signed for la in signed.layers) and signed.input_fmt.signed


def test_an_unsigned_model_survives_its_fxq(resnet, tmp_path):
    g, ds = resnet
    qm = quantizer.quantize_model(g, ds.calib(32), scheme="qiu", unsigned=True)
    artifact.save(qm, tmp_path / "u.fxq")
    back = artifact.load(tmp_path / "u.fxq")
    assert [la.out_fmt for la in back.layers] == [la.out_fmt for la in qm.layers]
    assert np.array_equal(golden.run(back, ds.x_test[:8]), golden.run(qm, ds.x_test[:8]))
    # an edited weight format may not be unsigned, nor 'signed' anything but a boolean
    doc = json.loads((tmp_path / "u.fxq").read_text())
    conv = next(la for la in doc["layers"] if la["op"] == "conv")
    for value, msg in ((False, "weights are signed"), (1, "signed must be true or false")):
        conv["weight"]["signed"] = value
        (tmp_path / "e.fxq").write_text(json.dumps(doc))
        (tmp_path / "e.fxq.npz").write_bytes((tmp_path / "u.fxq.npz").read_bytes())
        with pytest.raises(FxpgaError, match=msg):
            artifact.load(tmp_path / "e.fxq")


def test_the_engine_stores_unsigned_words(resnet):
    """The compiler's memory images and fused ops (``run_program``) against golden, the
    input unsigned too; the hardware is tests/test_hw.py's. An engine built without
    ``unsigned`` refuses the model, naming a layer."""
    g, ds = resnet
    qm = quantizer.quantize_model(g, ds.calib(32), unsigned=True, input_unsigned=True)
    cfg = compiler.EngineConfig.for_model(qm, 8)
    assert cfg.unsigned
    prog = compiler.compile_model(qm, cfg)
    signs = {d["signs"] for d in prog.descriptors}
    assert (compiler.SIGN_IN | compiler.SIGN_SKIP | compiler.SIGN_OUT) in signs  # an add
    xi = golden.quantize_input(qm, ds.x_test[:4])
    assert xi.max() > 127  # words the engine reads as negative, unless zero-extended
    want = golden.run_int(qm, xi).reshape(len(xi), -1)
    for i in range(len(xi)):
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i])
    off = dataclasses.replace(cfg, unsigned=False)
    with pytest.raises(FxpgaError, match=r"layer 'stem\.0' has unsigned tensors"):
        compiler.compile_model(qm, off)
    with pytest.raises(FxpgaError, match="EngineConfig.unsigned needs data_bits <= 17"):
        compiler.EngineConfig(data_bits=18, weight_bits=8, unsigned=True)


def test_quantize_unsigned_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "u.fxq"
    assert main(["quantize", "digits-cnn", "--unsigned", "--calib", "64", "-o", str(out)]) == 0
    assert "the engine will not run" not in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert any(la.get("output", {}).get("signed") is False for la in doc["layers"])
    # its formats re-applied with --config keep their signedness
    again = tmp_path / "again.fxq"
    assert main(["quantize", "digits-cnn", "--config", str(out), "-o", str(again), "-q"]) == 0
    assert [la.get("output") for la in json.loads(again.read_text())["layers"]] == [
        la.get("output") for la in doc["layers"]
    ]
