"""The MLPerf Tiny reference models (mlcommons/tiny, v1.x), as PyTorch definitions.

They are the yardstick FPGA inference flows are compared on (fpgaConvNet's, hls4ml's and
FINN's MLPerf Tiny results). Their data sets cannot be had here, so they are hardware-only
benchmarks: their weights are seeded at random, and their accuracy means nothing.

The layers follow the Keras reference models layer for layer, in fxpga's terms:

``resnet8`` (image classification, CIFAR-10, 3×32×32): conv3×3(16)-BN-ReLU; three stacks of
two conv3×3 + BN with a residual add and ReLU, 16/32/64 filters, stacks 2 and 3 starting with
stride 2 and a 1×1 stride-2 projection on the skip; average pool 8×8; FC 10.

``ds-cnn`` (keyword spotting, 1×49×10 MFCC): conv 10×4 stride 2 (64)-BN-ReLU; four
depthwise-separable blocks (depthwise 3×3-BN-ReLU, pointwise 1×1 (64)-BN-ReLU); average
pool 25×5; FC 12.

``mobilenet-v1-0.25`` (visual wake words, 3×96×96): conv3×3 stride 2 (8)-BN-ReLU; 13
depthwise-separable blocks of widths 16, 32, 32, 64, 64, 128 ×6, 256 ×2, stride 2 in blocks
2, 4, 6 and 12; average pool 3×3; FC 2.

``fc-ae`` (anomaly detection, 640 inputs): 640-128-128-128-128-8-128-128-128-128-640, each
hidden Dense followed by BN and ReLU.

TensorFlow's 'SAME' padding is asymmetric when it is odd in total (stride 2 on an even
input pads 0 before and 1 after): those layers are an explicit ``nn.ZeroPad2d`` and an
unpadded conv, as a TF export through ONNX (``pads [0,0,1,1]``) gives them. The Keras models
end in a softmax; these end at the logits (the argmax is the same).

All four import and quantize; they are built-in models (``zoo.HARDWARE_ONLY``) with seeded
weights (``zoo.seeded_state``). The engine runs none of them yet.
"""

from __future__ import annotations

import math

import torch.nn as nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) of one dimension: the output has
    ``ceil(size / stride)`` positions, and an odd total goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_same(cin, cout, kernel, stride, size_hw, groups=1) -> list[nn.Module]:
    """A Keras ``Conv2D(padding='same')`` (or depthwise, ``groups=cin``) on an input of
    spatial size ``size_hw``: a symmetric pad stays in the conv, an asymmetric one is a
    ``ZeroPad2d`` before it."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    (t, b), (left, r) = (same_padding(size_hw[0], kh, stride), same_padding(size_hw[1], kw, stride))
    if t == b and left == r:
        return [nn.Conv2d(cin, cout, (kh, kw), stride, padding=(t, left), groups=groups)]
    return [nn.ZeroPad2d((left, r, t, b)), nn.Conv2d(cin, cout, (kh, kw), stride, groups=groups)]


def _out(size_hw, stride):
    return tuple(-(-s // stride) for s in size_hw)


class ResidualStack(nn.Module):
    """Two conv3×3 + BN, added to the input (or its 1×1 stride-``stride`` projection), ReLU."""

    def __init__(self, cin, cout, stride, size_hw):
        super().__init__()
        mid = _out(size_hw, stride)
        self.conv1 = nn.Sequential(*conv_same(cin, cout, 3, stride, size_hw))
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Sequential(*conv_same(cout, cout, 3, 1, mid))
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
        return (y + self.skip(x)).relu()


class ResNet8(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.stack1 = ResidualStack(16, 16, 1, (32, 32))
        self.stack2 = ResidualStack(16, 32, 2, (32, 32))
        self.stack3 = ResidualStack(32, 64, 2, (16, 16))
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        x = self.stack3(self.stack2(self.stack1(x)))
        return self.fc(self.pool(x).flatten(1))


def separable(cin, cout, stride, size_hw) -> list[nn.Module]:
    """Depthwise 3×3 (stride ``stride``)-BN-ReLU, then pointwise 1×1-BN-ReLU."""
    return [
        *conv_same(cin, cin, 3, stride, size_hw, groups=cin),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class DSCNN(nn.Module):
    input_shape = (1, 49, 10)

    def __init__(self, classes: int = 12, filters: int = 64, blocks: int = 4):
        super().__init__()
        size = _out(self.input_shape[1:], 2)  # 25 x 5
        layers = [*conv_same(1, filters, (10, 4), 2, self.input_shape[1:])]
        layers += [nn.BatchNorm2d(filters), nn.ReLU(), nn.Dropout(0.2)]
        for _ in range(blocks):
            layers += separable(filters, filters, 1, size)
        layers += [nn.Dropout(0.4), nn.AvgPool2d(size), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, classes)

    def forward(self, x):
        return self.fc(self.features(x))


class MobileNetV1(nn.Module):
    """MobileNetV1 at width ``alpha`` (0.25 for visual wake words)."""

    # (output channels at alpha = 1, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
    BLOCKS += ((512, 1),) * 5 + ((1024, 2), (1024, 1))
    input_shape = (3, 96, 96)

    def __init__(self, alpha: float = 0.25, classes: int = 2):
        super().__init__()
        c = int(32 * alpha)
        size = self.input_shape[1:]
        layers = [*conv_same(3, c, 3, 2, size), nn.BatchNorm2d(c), nn.ReLU()]
        size = _out(size, 2)
        for width, stride in self.BLOCKS:
            cout = int(width * alpha)
            layers += separable(c, cout, stride, size)
            c, size = cout, _out(size, stride)
        layers += [nn.AvgPool2d(size), nn.Flatten(), nn.Dropout(0.1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.features(x))


class FCAutoencoder(nn.Module):
    input_shape = (640,)

    def __init__(self, inputs: int = 640, hidden: int = 128, code: int = 8):
        super().__init__()
        widths = [inputs, *[hidden] * 4, code, *[hidden] * 4]
        layers = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, inputs)

    def forward(self, x):
        return self.out(self.body(x))


# name: (class, what it is in MLPerf Tiny)
MODELS = {
    "resnet8": (ResNet8, "image classification (CIFAR-10)"),
    "ds-cnn": (DSCNN, "keyword spotting (Speech Commands)"),
    "mobilenet-v1-0.25": (MobileNetV1, "visual wake words"),
    "fc-ae": (FCAutoencoder, "anomaly detection (ToyADMOS)"),
}


def folded_parameters(model: nn.Module) -> int:
    """Weights and biases once every BatchNorm is folded into the conv/linear before it (a
    conv without bias gains one): MLPerf Tiny's parameter counts."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            n += m.weight.numel() + m.weight.shape[0]
    return n


def macs(model: nn.Module, input_shape=None) -> int:
    """Multiply-accumulates of one inference (conv and linear layers)."""
    import torch

    total = 0

    def count(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * math.prod(m.weight.shape[1:])
        else:
            total += m.weight.numel()

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *(input_shape or model.input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return total
