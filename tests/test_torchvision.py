"""Model definitions written elsewhere import and quantize: torchvision's mobilenet_v2
(inverted residuals, ReLU6, adaptive average pooling, Dropout) and resnet18 (residual adds
with ``+=``, 1×1 stride-2 projections, max pooling), with seeded random weights."""

import numpy as np
import pytest
import torch

from fxpga.errors import FxpgaError
from fxpga.quant import fakequant, frontend, golden, quantizer


def _check(model, shape, ops):
    g = frontend.from_module(model, shape)
    for op, n in ops.items():
        assert sum(node.op == op for node in g.nodes) == n, op
    x = np.random.default_rng(0).uniform(-1, 1, (6, *shape))
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(g.float_forward(x), want, rtol=1e-4, atol=1e-4)  # torch: fp32
    qm = quantizer.quantize_model(g, x[:4], quantizer.Widths(8))
    got = np.ldexp(golden.run(qm, x).astype(np.float64), -qm.output_fmt.fl)
    np.testing.assert_array_equal(fakequant.fake_run(qm, x), got)
    return g


def test_mobilenet_v2(torchvision_models):
    torch.manual_seed(0)
    model = torchvision_models.mobilenet_v2(weights=None, width_mult=0.5, num_classes=10).eval()
    g = _check(model, (3, 64, 64), {"add": 10, "clip": 35, "avgpool": 1})
    assert {n.groups for n in g.nodes if n.op == "conv"} > {1}  # depthwise


def test_resnet18(torchvision_models, monkeypatch):
    """Its 11.7M weights (BN folded) are more than any board holds: refused in one line;
    with that bound lifted, it goes through."""
    torch.manual_seed(0)
    model = torchvision_models.resnet18(weights=None).eval()
    with pytest.raises(FxpgaError, match=r"11,684,712 weights and biases, more than"):
        frontend.from_module(model, (3, 64, 64))
    monkeypatch.setattr(frontend, "MAX_WEIGHTS", 12_000_000)
    _check(model, (3, 64, 64), {"add": 8, "maxpool": 1, "avgpool": 1})
