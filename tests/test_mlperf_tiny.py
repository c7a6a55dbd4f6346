"""The MLPerf Tiny reference models as defined here have the published parameter counts,
MACs and shapes (mlcommons/tiny; BN folded, params = weights + biases)."""

import pytest
import torch
import torch.nn as nn

from fxpga.quant import mlperf_tiny as tiny

# name: (folded parameters, MACs rounded as published, output shape)
PUBLISHED = {
    "resnet8": (77_706, 12.5e6, (10,)),
    "ds-cnn": (22_604, 2.66e6, (12,)),
    "mobilenet-v1-0.25": (210_850, 7.49e6, (2,)),
    "fc-ae": (265_864, 0.26e6, (640,)),
}


@pytest.mark.parametrize("name", list(tiny.MODELS))
def test_published_size(name):
    params, macs, out = PUBLISHED[name]
    model = tiny.MODELS[name][0]().eval()
    assert tiny.folded_parameters(model) == params
    got = tiny.macs(model)
    digits = len(f"{macs:.3g}".split("e")[0].replace(".", ""))  # the published precision
    assert float(f"{got:.{digits}g}") == macs, got
    with torch.no_grad():
        assert tuple(model(torch.zeros(2, *model.input_shape)).shape[1:]) == out


@pytest.mark.parametrize(
    "size,kernel,stride,pads",
    [
        (96, 3, 2, (0, 1)),
        (32, 3, 2, (0, 1)),
        (32, 1, 2, (0, 0)),
        (49, 10, 2, (4, 5)),
        (10, 4, 2, (1, 1)),
        (32, 3, 1, (1, 1)),
        (25, 3, 1, (1, 1)),
        (5, 3, 1, (1, 1)),
    ],
)
def test_same_padding_is_tensorflows(size, kernel, stride, pads):
    """TF 'SAME': ceil(size / stride) outputs, an odd total pad goes after."""
    assert tiny.same_padding(size, kernel, stride) == pads
    before, after = pads
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)


def test_feature_map_sizes():
    """ResNet-8 32 → 16 → 8 before its 8×8 pool; DS-CNN 25×5 after its stride-2 conv;
    MobileNetV1 96 → 48 → … → 3 before its 3×3 pool."""
    shapes = {}

    def record(name):
        def hook(m, i, o):
            shapes.setdefault(name, []).append(tuple(i[0].shape[1:]))

        return hook

    for name in ("resnet8", "ds-cnn", "mobilenet-v1-0.25"):
        model = tiny.MODELS[name][0]().eval()
        for m in model.modules():
            if isinstance(m, nn.AvgPool2d):
                m.register_forward_hook(record(name))
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape))
    assert shapes == {
        "resnet8": [(64, 8, 8)],
        "ds-cnn": [(64, 25, 5)],
        "mobilenet-v1-0.25": [(256, 3, 3)],
    }
    ds = tiny.DSCNN()
    assert [type(m).__name__ for m in ds.features[:2]] == ["ZeroPad2d", "Conv2d"]
    assert ds.features[0].padding == (1, 1, 4, 5)  # TF 'SAME' for 10×4 stride 2 on 49×10
    assert sum(isinstance(m, nn.Conv2d) and m.groups == 64 for m in ds.modules()) == 4


@pytest.mark.parametrize("name", ["resnet8", "ds-cnn", "mobilenet-v1-0.25", "fc-ae"])
def test_models_import_and_quantize_exactly(name):
    """The four MLPerf Tiny models go through the frontend (residual adds with 1×1 stride-2
    projections, TF 'SAME' pads, depthwise convs, BN folded), match torch, and quantize with
    the golden model equal to fake quantization. Seeded random weights and inputs: a
    hardware benchmark, no accuracy claimed."""
    import numpy as np

    from fxpga.quant import fakequant, frontend, golden, quantizer

    torch.manual_seed(0)
    model = tiny.MODELS[name][0]().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    g = frontend.from_module(model, model.input_shape)
    assert sum(n.weight.size + n.bias.size for n in g.weighted()) == PUBLISHED[name][0]
    x = np.random.default_rng(0).standard_normal((6, *model.input_shape))
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(g.float_forward(x), want, rtol=1e-4, atol=1e-4)  # torch: fp32
    qm = quantizer.quantize_model(g, x, quantizer.Widths(8))
    assert qm.max_acc_bits <= 52
    got = np.ldexp(golden.run(qm, x).astype(np.float64), -qm.output_fmt.fl)
    np.testing.assert_array_equal(fakequant.fake_run(qm, x), got)
    assert sum(n.op == "add" for n in g.nodes) == (3 if name == "resnet8" else 0)
