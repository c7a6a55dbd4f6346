"""Model import: every supported form, BN folding equivalence, and loud failures."""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxpga.errors import FxpgaError
from fxpga.quant import frontend, ir


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


class AllForms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, (3, 5), stride=(1, 2), padding=(1, 2))
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, padding="same", bias=False)
        self.b2 = nn.BatchNorm2d(5)
        self.p = nn.MaxPool2d(2)
        self.a = nn.AvgPool2d(3, stride=1, padding=1)
        self.id = nn.Identity()
        self.fl = nn.Flatten()
        self.f1 = nn.Linear(5 * 4 * 2, 7)
        self.b3 = nn.BatchNorm1d(7)
        self.d = nn.Dropout(0.3)
        self.f2 = nn.Linear(7, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = self.a(self.id(self.p(x)))
        x = x.view(x.size(0), -1)
        x = self.d(self.b3(self.f1(x)).relu())
        return self.f2(x)


def test_all_forms_fold_and_match_torch():
    torch.manual_seed(0)
    model = _randomize_bn(AllForms())
    g = frontend.from_module(model, (3, 8, 8))
    assert [n.op for n in g.nodes] == [
        "conv",
        "relu",
        "conv",
        "relu",
        "maxpool",
        "avgpool",
        "flatten",
        "linear",
        "relu",
        "linear",
    ]
    assert [n.name for n in g.weighted()] == ["c1", "c2", "f1", "f2"]
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_bn_folding_equivalence(seed):
    torch.manual_seed(seed)
    model = _randomize_bn(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 5 * 5, 6, bias=False),
            nn.BatchNorm1d(6),
        ),
        seed,
    )
    g = frontend.from_module(model, (2, 5, 5))
    assert not any(isinstance(n, ir.BatchNorm) for n in g.nodes)
    x = torch.randn(32, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        want = model.double()(x).numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-12, atol=1e-12)


def test_export_pt2_matches_fx(tmp_path):
    torch.manual_seed(1)
    model = _randomize_bn(AllForms())
    ep = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    torch.export.save(ep, tmp_path / "m.pt2")
    ge = frontend.from_export(tmp_path / "m.pt2")
    gf = frontend.from_module(model, (3, 8, 8))
    assert [n.op for n in ge.nodes] == [n.op for n in gf.nodes]
    assert [n.name for n in ge.weighted()] == ["c1", "c2", "f1", "f2"]
    for a, b in zip(ge.weighted(), gf.weighted(), strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8))
    np.testing.assert_allclose(ge.float_forward(x), gf.float_forward(x), rtol=1e-12)


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.tanh(self.c(x))


def test_unsupported_op_names_node_line_and_supported():
    with pytest.raises(FxpgaError) as e:
        frontend.from_module(Tanh(), (1, 5, 5))
    msg = str(e.value)
    assert msg.startswith("node 'tanh' (call_function tanh) at test_frontend.py:")
    assert "unsupported op; supported are Conv2d" in msg and "\n" not in msg


class Classifier(nn.Module):
    """Ends the way classifiers are written: log_softmax (pytorch/examples' MNIST net),
    a Softmax module, or a sigmoid."""

    def __init__(self, tail):
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 5)
        self.tail = tail

    def forward(self, x):
        return self.tail(self.fc2(F.relu(self.fc1(x))))


TAILS = [
    (lambda x: F.log_softmax(x, dim=1), ("log_softmax",)),
    (nn.Softmax(dim=-1), ("softmax",)),
    (lambda x: torch.sigmoid(x), ("sigmoid",)),
    (lambda x: x.softmax(1).log(), None),  # log after it: refused
    (nn.Sequential(nn.Softmax(dim=1), nn.LogSoftmax(dim=1)), ("softmax", "log_softmax")),
]


@pytest.mark.parametrize("tail,want", TAILS)
def test_softmax_sigmoid_last_are_left_to_the_host(tail, want):
    torch.manual_seed(0)
    model = Classifier(tail).eval()
    if want is None:
        with pytest.raises(FxpgaError, match=r"node 'log' \(call_method log\).*unsupported op"):
            frontend.from_module(model, (12,))
        return
    g = frontend.from_module(model, (12,))
    assert g.host_tail == want and [n.op for n in g.nodes] == ["linear", "relu", "linear"]
    x = torch.randn(64, 12)
    with torch.no_grad():
        logits = model.fc2(F.relu(model.fc1(x))).double().numpy()
        probs = model(x).numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), logits, rtol=1e-6, atol=1e-6)
    assert np.array_equal(g.float_forward(x.numpy()).argmax(1), probs.argmax(1))


def test_softmax_last_through_torch_export(tmp_path):
    model = Classifier(lambda x: F.log_softmax(x, dim=1)).eval()
    ep = torch.export.export(model, (torch.randn(2, 12),))
    torch.export.save(ep, tmp_path / "m.pt2")
    g = frontend.from_export(tmp_path / "m.pt2")
    assert g.host_tail == ("log_softmax",) and [n.op for n in g.nodes][-1] == "linear"


@pytest.mark.parametrize(
    "forward,why",
    [
        (lambda m, x: F.softmax(m.fc2(F.relu(m.fc1(x))), dim=0), "over dim=0 of shape"),
        (lambda m, x: m.fc2(torch.sigmoid(m.fc1(x))), "follows a sigmoid"),
    ],
)
def test_softmax_sigmoid_elsewhere_are_refused(forward, why):
    class M(Classifier):
        def forward(self, x):
            return forward(self, x)

    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(M(None).eval(), (12,))


class FunctionalPools(nn.Module):
    """pytorch/examples' MNIST net and classic LeNet code pool through torch.nn.functional."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.avg_pool2d(F.relu(self.c2(x)), kernel_size=3, stride=2, padding=1)
        x = F.max_pool2d(x, (2, 2), stride=1)
        return self.fc(torch.flatten(x, 1))


def test_functional_pools_match_torch():
    torch.manual_seed(0)
    model = FunctionalPools().eval()
    g = frontend.from_module(model, (1, 10, 10))
    pools = [n for n in g.nodes if n.op in ("maxpool", "avgpool")]
    assert [(n.op, n.kernel, n.stride, n.padding) for n in pools] == [
        ("maxpool", (2, 2), (2, 2), (0, 0)),
        ("avgpool", (3, 3), (2, 2), (1, 1)),
        ("maxpool", (2, 2), (1, 1), (0, 0)),
    ]
    x = torch.randn(8, 1, 10, 10)
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "pool,why",
    [
        (lambda x: F.max_pool2d(x, 2, ceil_mode=True), "ceil_mode=True is not supported"),
        (lambda x: F.max_pool2d(x, 2, dilation=2), "dilation"),
        (lambda x: F.avg_pool2d(x, 2, count_include_pad=False), "count_include_pad=False"),
        (lambda x: F.avg_pool2d(x, 2, divisor_override=3), "divisor_override"),
    ],
)
def test_functional_pool_variants_are_refused(pool, why):
    class M(nn.Module):
        def forward(self, x):
            return pool(x)

    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(M(), (1, 6, 6))


@pytest.mark.parametrize(
    "layer,why",
    [
        (nn.Conv2d(1, 2, 3, groups=1, dilation=2), "dilation=(2, 2) is not supported"),
        (nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), "padding_mode='circular'"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True is not supported"),
        (nn.AvgPool2d(2, count_include_pad=False, padding=1), "count_include_pad=False"),
        (nn.Tanh(), "unsupported op"),
    ],
)
def test_unsupported_variants(layer, why):
    cin = 1
    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(nn.Sequential(layer), (cin, 6, 6))


def test_bn_not_after_conv_is_an_error():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2)).eval()
    with pytest.raises(FxpgaError, match=r"BatchNorm can only be folded .* follows '1' \(relu\)"):
        frontend.from_module(m, (1, 5, 5))


def test_non_finite_weights():
    m = nn.Sequential(nn.Linear(3, 2))
    m[0].weight.data[0, 1] = float("nan")
    msg = r"^node '_0' \(call_module 0\): weight has 1 non-finite value"
    with pytest.raises(FxpgaError, match=msg):
        frontend.from_module(m, (3,))


def test_wrong_input_shape():
    with pytest.raises(FxpgaError, match=r"does not accept inputs of shape \(N, 2, 8, 8\)"):
        frontend.from_module(nn.Sequential(nn.Conv2d(1, 2, 3)), (2, 8, 8))


FACTORY = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))

def not_module():
    return 3

VALUE = 4
"""


def test_factory_and_weights(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(FACTORY)
    m = frontend.load_factory(f"{f}:make", None)
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    m2 = frontend.load_factory(f"{f}:make", str(tmp_path / "w.pt"))
    torch.testing.assert_close(m2[0].weight, sd["0.weight"])
    with pytest.raises(FxpgaError, match=r"no such file"):
        frontend.load_factory(f"{tmp_path}/missing.py:make", None)
    with pytest.raises(FxpgaError, match=r"has no attribute 'nope'"):
        frontend.load_factory(f"{f}:nope", None)
    with pytest.raises(FxpgaError, match=r"'VALUE' is not callable"):
        frontend.load_factory(f"{f}:VALUE", None)
    with pytest.raises(FxpgaError, match=r"not_module\(\) returned int, not a torch.nn.Module"):
        frontend.load_factory(f"{f}:not_module", None)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(FxpgaError, match=r"bad.pt: does not match make\(\)"):
        frontend.load_factory(f"{f}:make", str(tmp_path / "bad.pt"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_refuse_pickled_objects(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(FACTORY)
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FxpgaError, match=r"weights_only=True"):
        frontend.load_factory(f"{f}:make", str(tmp_path / "evil.pt"))


class GlobalPools(nn.Module):
    """Global average pooling as model zoos write it (ResNet, MobileNet, DS-CNN heads)."""

    def __init__(self, form):
        super().__init__()
        self.c = nn.Conv2d(2, 6, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)
        self.form = form

    def forward(self, x):
        x = F.relu(self.c(x))
        if self.form == "module":
            x = torch.flatten(self.gap(x), 1)
        elif self.form == "functional":
            x = F.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1)
        elif self.form == "mean":
            x = x.mean((2, 3))
        else:  # mean with keepdim, then flatten
            x = torch.mean(x, dim=[-2, -1], keepdim=True).flatten(1)
        return self.fc(x)


@pytest.mark.parametrize("form", ["module", "functional", "mean", "mean-keepdim"])
@pytest.mark.parametrize("export", [False, True])
def test_global_average_pooling_forms(form, export, tmp_path):
    torch.manual_seed(0)
    model = GlobalPools(form).eval()
    if export:
        ep = torch.export.export(model, (torch.randn(2, 2, 5, 3),))
        torch.export.save(ep, tmp_path / "m.pt2")
        g = frontend.from_export(tmp_path / "m.pt2")
    else:
        g = frontend.from_module(model, (2, 5, 3))
    pool = next(n for n in g.nodes if n.op == "avgpool")
    assert (pool.kernel, pool.stride, pool.padding) == ((5, 3), (5, 3), (0, 0))
    assert [n.op for n in g.nodes][-3:] == ["avgpool", "flatten", "linear"]
    x = torch.randn(8, 2, 5, 3)
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-6, atol=1e-6)


def test_adaptive_pool_to_a_divisor_is_a_plain_pool():
    g = frontend.from_module(nn.Sequential(nn.AdaptiveAvgPool2d((2, None))), (1, 6, 4))
    assert (g.nodes[0].kernel, g.nodes[0].stride, g.output_shape) == ((3, 1), (3, 1), (1, 2, 4))


@pytest.mark.parametrize(
    "forward,why",
    [
        (lambda x: F.adaptive_avg_pool2d(x, 4), "adaptive average pooling of 6x6 to 4x4"),
        (lambda x: x.mean(1), "mean over dims 1: supported only over the spatial dims"),
        (lambda x: x.mean((1, 2, 3)), "mean over dims (1, 2, 3)"),
    ],
)
def test_other_averages_are_refused(forward, why):
    class M(nn.Module):
        def forward(self, x):
            return forward(x)

    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(M(), (1, 6, 6))


class Clamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)
        self.r6 = nn.ReLU6()
        self.ht = nn.Hardtanh(-1.0, 2.0)

    def forward(self, x):
        x = self.ht(self.r6(self.c(x)))
        x = F.hardtanh(F.relu6(x), 0.0, 3.0)
        x = torch.clip(torch.clamp(x, 0, 6).clamp(min=0.5), max=4)
        return x.clip(0, 6).clamp(min=0)


@pytest.mark.parametrize("export", [False, True])
def test_clamp_forms(export, tmp_path):
    torch.manual_seed(0)
    model = Clamps().eval()
    if export:
        ep = torch.export.export(model, (torch.randn(2, 1, 5, 5),))
        torch.export.save(ep, tmp_path / "m.pt2")
        g = frontend.from_export(tmp_path / "m.pt2")
    else:
        g = frontend.from_module(model, (1, 5, 5))
    assert [(n.op, getattr(n, "lo", None), getattr(n, "hi", None)) for n in g.nodes[1:]] == [
        ("clip", 0.0, 6.0),
        ("clip", -1.0, 2.0),
        ("clip", 0.0, 6.0),
        ("clip", 0.0, 3.0),
        ("clip", 0.0, 6.0),
        ("clip", 0.5, None),
        ("clip", None, 4.0),
        ("clip", 0.0, 6.0),
        ("relu", None, None),  # clamp(min=0) is a ReLU
    ]
    x = torch.randn(8, 1, 5, 5) * 4
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "forward,why",
    [
        (lambda x: F.leaky_relu(x, 0.1), "LeakyReLU is not supported: its slope"),
        (lambda x: torch.clamp(x, 2.0, 1.0), "clamp to [2.0, 1.0] is empty"),
    ],
)
def test_other_activations_are_refused(forward, why):
    class M(nn.Module):
        def forward(self, x):
            return forward(x)

    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(M(), (1, 4, 4))


def test_leaky_relu_module_is_refused():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("leaky", nn.LeakyReLU())
    with pytest.raises(FxpgaError, match=r"^node 'leaky' \(call_module leaky\).*LeakyReLU is not"):
        frontend.from_module(model, (1, 4, 4))


def test_clamp_to_a_tensor_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("top", torch.ones(1))

        def forward(self, x):
            return torch.clamp(x, max=self.top)

    with pytest.raises(FxpgaError, match="clamp to a tensor bound is not supported"):
        frontend.from_module(M(), (1, 4, 4))


class Separable(nn.Module):
    """A depthwise-separable block (MobileNet, DS-CNN) and a grouped conv (ResNeXt)."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)  # 2 outputs per channel
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)
        self.gc = nn.Conv2d(6, 6, 3, stride=2, groups=3)

    def forward(self, x):
        x = F.relu(self.bn1(self.dw(x)))
        return self.gc(F.relu6(self.bn2(self.pw(x))))


def test_depthwise_and_grouped_conv_fold_and_match_torch(tmp_path):
    from fxpga.hw import compiler
    from fxpga.quant import artifact, golden, quantizer

    torch.manual_seed(0)
    model = _randomize_bn(Separable())
    g = frontend.from_module(model, (4, 7, 7))
    assert [(n.op, getattr(n, "groups", None)) for n in g.nodes] == [
        ("conv", 4),
        ("relu", None),
        ("conv", 1),
        ("clip", None),
        ("conv", 3),
    ]
    x = torch.randn(8, 4, 7, 7)
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-6, atol=1e-6)
    qm = quantizer.quantize_model(g, x.numpy(), quantizer.Widths(8))
    artifact.save(qm, tmp_path / "s.fxq")
    back = artifact.load(tmp_path / "s.fxq")
    assert back.layers[0].node.groups == 4 and back.layers[4].node.groups == 3
    np.testing.assert_array_equal(golden.run(back, x.numpy()), golden.run(qm, x.numpy()))
    with pytest.raises(FxpgaError, match=r"'dw': grouped convolution \(groups=4\) needs an"):
        compiler.compile_model(qm)  # an engine without EngineConfig.depthwise
    prog = compiler.compile_model(qm, compiler.EngineConfig.for_model(qm, 4))
    xi = golden.quantize_input(qm, x.numpy()[:1])
    want = golden.run_int(qm, xi)[0].reshape(-1)
    np.testing.assert_array_equal(compiler.run_program(prog, xi[0]).reshape(-1), want)


class Pads(nn.Module):
    def __init__(self):
        super().__init__()
        self.zp = nn.ZeroPad2d((0, 1, 0, 1))  # TF 'SAME', stride 2, even input
        self.cp = nn.ConstantPad2d((1, 1, 4, 5), 0.0)
        self.c = nn.Conv2d(2, 3, (10, 4), stride=2)

    def forward(self, x):
        x = self.c(self.cp(self.zp(x)))
        return F.pad(F.pad(x, (1, 0)), (0, 0, 2, 1))


@pytest.mark.parametrize("export", [False, True])
def test_zero_padding_forms(export, tmp_path):
    torch.manual_seed(0)
    model = Pads().eval()
    if export:
        ep = torch.export.export(model, (torch.randn(2, 2, 48, 9),))
        torch.export.save(ep, tmp_path / "m.pt2")
        g = frontend.from_export(tmp_path / "m.pt2")
    else:
        g = frontend.from_module(model, (2, 48, 9))
    assert [(n.op, getattr(n, "pads", None)) for n in g.nodes] == [
        ("pad", (0, 1, 0, 1)),
        ("pad", (1, 1, 4, 5)),
        ("conv", None),
        ("pad", (1, 0, 0, 0)),
        ("pad", (0, 0, 2, 1)),
    ]
    x = torch.randn(4, 2, 48, 9)
    with torch.no_grad():
        want = model(x).double().numpy()
    np.testing.assert_allclose(g.float_forward(x.numpy()), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "pad,why",
    [
        (nn.ReflectionPad2d(1), "unsupported op"),
        (nn.ConstantPad2d(1, 0.5), "value=0.5 is not supported (only zeros)"),
        (lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate"), "mode='replicate'"),
        (lambda x: F.pad(x, (1, 1, 1, 1, 1, 1)), "supported are (left, right, top, bottom)"),
    ],
)
def test_other_padding_is_refused(pad, why):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            if isinstance(pad, nn.Module):
                self.pad = pad

        def forward(self, x):
            return self.pad(x) if isinstance(pad, nn.Module) else pad(x)

    with pytest.raises(FxpgaError, match=re.escape(why)):
        frontend.from_module(M(), (1, 4, 4))
