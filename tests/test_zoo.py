"""The built-in models and bundled datasets: what bench/ and the docs quote rests on them."""

import numpy as np
import pytest

from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.quant import data, frontend, quantizer, zoo


def test_digits16_is_digits_upscaled(digits):
    d16 = data.load("digits16")
    assert d16.name == "digits16" and d16.sample_shape == (1, 16, 16)
    assert np.array_equal(d16.y_test, digits.y_test) and np.array_equal(d16.y_train, digits.y_train)
    assert len(d16.x_calib) == len(digits.x_calib) and len(d16.x_train) == len(digits.x_train)
    assert d16.x_test.dtype == np.float32 and d16.x_test.min() >= 0 and d16.x_test.max() <= 1
    # bilinear with half-pixel centres: output pixel 6 sits at source coordinate
    # (6 + 0.5) / 2 - 0.5 = 2.75, so it weighs source pixels 2 and 3 by 1/4 and 3/4
    src, up = digits.x_test[7, 0], d16.x_test[7, 0]
    k = np.array([[1, 3], [3, 9]]) / 16
    expect = k[0, 0] * src[2, 2] + k[0, 1] * src[2, 3] + k[1, 0] * src[3, 2] + k[1, 1] * src[3, 3]
    assert up[6, 6] == pytest.approx(expect, abs=1e-6)


def test_unknown_dataset():
    with pytest.raises(FxpgaError, match="unknown dataset 'mnist': use digits or digits16"):
        data.load("mnist")


def test_digits_vgg_trains_and_maps_onto_the_engine():
    model, ds_name = zoo.builtin("digits-vgg", progress=False)
    ds = data.load(ds_name)
    graph = frontend.from_module(model, ds.sample_shape)
    assert [n.op for n in graph.weighted()] == ["conv"] * 5 + ["linear"] * 2
    assert quantizer.float_accuracy(graph, ds.x_test, ds.y_test) >= 0.97
    qm = quantizer.quantize_model(graph, ds.x_calib[:64], quantizer.Widths(8))
    prog = compiler.compile_model(qm, compiler.EngineConfig.for_model(qm, 8))
    assert prog.total_macs == 1_823_360 and len(prog.ops) == 7
