"""The ONNX frontend: every op against onnxruntime's float forward, the same graph as the torch.fx
frontend, real networks (MLPerf Tiny, torchvision), and a one-line error for each bad input."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from fxpga.errors import FxpgaError
from fxpga.quant import frontend, ir, mlperf_tiny, onnx_import

# the legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not a dependency
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FLOAT = TensorProto.FLOAT


# ---- helpers -------------------------------------------------------------------------------


def export(model: nn.Module, shape, path, **kw):
    """``model`` through the TorchScript exporter (the dynamo one needs onnxscript)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *shape),), str(path), dynamo=False, **kw)
    return path


def save(path, nodes, x_shape, inits=None, opset=17, x_name="x"):
    """A hand-built model of ``nodes`` from input ``x`` (N, *x_shape) to output ``y``; ``inits``:
    name → array, stored as float32 initializers (int64 where the array is integer)."""
    tensors = [
        numpy_helper.from_array(
            np.asarray(a, np.int64 if np.asarray(a).dtype.kind in "iu" else np.float32), name
        )
        for name, a in (inits or {}).items()
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(x_name, FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", FLOAT, None)],
        initializer=tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # onnxruntime reads it for every opset used here
    model = onnx.shape_inference.infer_shapes(model)  # the output's shape, which check_model wants
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def runtime(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def with_host_tail(graph: ir.Graph, y: np.ndarray) -> np.ndarray:
    """``y`` with the ops the host applies after the integer network."""
    for op in graph.host_tail:
        t = torch.from_numpy(y)
        y = {"softmax": t.softmax(1), "log_softmax": t.log_softmax(1), "sigmoid": t.sigmoid()}[op]
        y = y.numpy()
    return y


def matches_runtime(path, x, input_shape=None, rtol=1e-5, atol=1e-5) -> ir.Graph:
    """Import ``path`` and check its float forward (and host tail) against onnxruntime's on
    ``x``."""
    graph = onnx_import.from_onnx(path, input_shape)
    want = runtime(path, x)
    got = with_host_tail(graph, graph.float_forward(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return graph


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def randomize_bn(model: nn.Module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def one_line_error(path, *needles, input_shape=None) -> str:
    """Importing ``path`` fails with a one-line FxpgaError that contains every needle."""
    with pytest.raises(FxpgaError) as e:
        onnx_import.from_onnx(path, input_shape)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def ops(graph: ir.Graph) -> list[str]:
    return [n.op for n in graph.nodes]


# ---- torch models through the exporter -------------------------------------------------------


class Chain(nn.Module):
    """Most forms the torch exporter produces on the way through a chain."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2))
        self.b1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.g = nn.Conv2d(8, 6, 3, stride=2, groups=2)
        self.mp = nn.MaxPool2d(3, stride=1, padding=1)
        self.ap = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 2, 10)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu6(self.dw(x))
        x = torch.clamp(self.g(self.pad(x)), -1.0, 2.0)
        x = self.ap(self.mp(x))
        x = x.view(x.size(0), -1)
        x = self.drop(F.hardtanh(self.fc1(x), -3.0, 3.0))
        return torch.log_softmax(self.fc2(x), dim=1)


def test_torch_chain_matches_runtime(tmp_path, rng):
    model = randomize_bn(Chain())
    g = matches_runtime(export(model, (3, 8, 8), tmp_path / "m.onnx"), rand(rng, 1, 3, 8, 8))
    assert ops(g) == [
        "conv",
        "relu",
        "conv",
        "clip",
        "pad",
        "conv",
        "clip",
        "maxpool",
        "avgpool",
        "flatten",
        "linear",
        "clip",
        "linear",
    ]
    assert g.host_tail == ("log_softmax",)
    assert g["/pad/Pad"].pads == (0, 1, 0, 1)


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding="same")

    def forward(self, x):
        x = self.c(x).relu()
        y = F.adaptive_avg_pool2d(x, 1).flatten(1)  # GlobalAveragePool + Flatten
        z = x.mean((2, 3))  # ReduceMean, keepdims=0
        return torch.sigmoid(torch.cat([y, z], 1))


def test_torch_global_pooling_and_feature_concat(tmp_path, rng):
    g = matches_runtime(export(Pools(), (2, 6, 6), tmp_path / "m.onnx"), rand(rng, 1, 2, 6, 6))
    assert ops(g) == ["conv", "relu", "avgpool", "flatten", "avgpool", "flatten", "concat"]
    assert g.host_tail == ("sigmoid",)


def test_dynamic_batch_export_with_view(tmp_path, rng):
    """``view(x.size(0), -1)`` with a dynamic batch: Shape → Gather → Unsqueeze → Concat."""
    path = export(
        Chain(),
        (3, 8, 8),
        tmp_path / "m.onnx",
        input_names=["x"],
        dynamic_axes={"x": {0: "N"}},
    )
    g = matches_runtime(path, rand(rng, 5, 3, 8, 8))
    assert g.input_shape == (3, 8, 8)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.b0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.b0(self.c0(x)).relu()
        y = self.b2(self.c2(self.b1(self.c1(x)).relu()))
        x = (x + y).relu()
        x = self.c3(x).relu() + self.proj(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(3, 2, 5, padding=2)
        self.p = nn.MaxPool2d(3, 1, 1)
        self.mix = nn.Conv2d(15, 5, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x).relu(), self.c(x), self.p(x)], dim=1)
        return self.mix(y).flatten(1)


def test_residual_net_matches_runtime(tmp_path, rng):
    model = randomize_bn(Residual())
    g = matches_runtime(export(model, (3, 8, 8), tmp_path / "m.onnx"), rand(rng, 1, 3, 8, 8))
    assert ops(g).count("add") == 2
    assert "batchnorm" not in ops(g)


def test_concat_net_matches_runtime(tmp_path, rng):
    g = matches_runtime(export(Inception(), (3, 8, 8), tmp_path / "m.onnx"), rand(rng, 1, 3, 8, 8))
    (cat,) = [n for n in g.nodes if n.op == "concat"]
    assert len(cat.inputs) == 4 and cat.out_shape == (15, 8, 8)


def topology(graph: ir.Graph) -> list[tuple[str, tuple[int, ...]]]:
    """Each node's op and its inputs as positions (-1: the graph input), names aside."""
    pos = {ir.INPUT: -1} | {n.name: k for k, n in enumerate(graph.nodes)}
    return [(n.op, tuple(pos[i] for i in n.inputs)) for n in graph.nodes]


@pytest.mark.parametrize("net", [Chain, Residual])
def test_same_graph_as_torch_frontend(tmp_path, net):
    """The network as an nn.Module (torch.fx) and as ONNX: one graph, weights to float32."""
    model = randomize_bn(net())
    want = frontend.from_module(model, (3, 8, 8))
    got = onnx_import.from_onnx(export(model, (3, 8, 8), tmp_path / "m.onnx"))
    assert topology(got) == topology(want)
    assert got.host_tail == want.host_tail
    for a, b in zip(got.nodes, want.nodes, strict=True):
        assert (a.in_shape, a.out_shape, a.attrs()) == (b.in_shape, b.out_shape, b.attrs())
        if a.has_weights:
            np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-6)


# ---- hand-built models: what the torch exporter never writes ---------------------------------


def test_gemm_transb0_alpha_beta_and_matmul_bias(tmp_path, rng):
    nodes = [
        helper.make_node("Gemm", ["x", "B0", "C0"], ["h0"], alpha=0.5, beta=2.0, name="g0"),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("Gemm", ["r0", "B1", "C1"], ["h1"], transB=1, beta=0.25),
        helper.make_node("MatMul", ["h1", "W2"], ["m2"], name="mm"),
        helper.make_node("Add", ["b2", "m2"], ["a2"], name="bias"),  # constant first
        helper.make_node("Clip", ["a2", "", "hi"], ["c2"]),  # max only (opset 11+)
        helper.make_node("MatMul", ["c2", "W3"], ["y"]),  # no bias
    ]
    inits = {
        "B0": rand(rng, 6, 7),
        "C0": rand(rng, 7),
        "B1": rand(rng, 5, 7),
        "C1": rand(rng, 1, 5),
        "W2": rand(rng, 5, 4),
        "b2": rand(rng, 4),
        "hi": np.float32(0.5),
        "W3": rand(rng, 4, 3),
    }
    path = save(tmp_path / "m.onnx", nodes, [1, 6], inits)
    g = matches_runtime(path, rand(rng, 1, 6))
    assert ops(g) == ["linear", "relu", "linear", "linear", "clip", "linear"]
    assert g["mm"].bias.tolist() == pytest.approx(inits["b2"].tolist())
    clip = g.nodes[4]
    assert (clip.lo, clip.hi) == (None, 0.5)


def test_clip_attributes_before_opset_11(tmp_path, rng):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c"], ["k"], min=-1.0, max=2.0),
        helper.make_node("Clip", ["k"], ["r"], min=0.0),  # max defaults to +FLT_MAX: a ReLU
        helper.make_node("Clip", ["r"], ["y"]),  # no bounds: nothing
    ]
    path = save(tmp_path / "m.onnx", nodes, [1, 2, 5, 5], {"w": rand(rng, 3, 2, 3, 3)}, opset=10)
    g = matches_runtime(path, rand(rng, 1, 2, 5, 5))
    assert ops(g) == ["conv", "clip", "relu"]


@pytest.mark.parametrize("flatten", ["Reshape", "Flatten"])
@pytest.mark.parametrize("dense", ["Gemm", "MatMul"])
def test_nhwc_flatten_permutes_dense_weights(tmp_path, rng, flatten, dense):
    """A TensorFlow export's flatten, Transpose(0, 2, 3, 1) then (N, H·W·C) (through a
    Dropout here): an ir.Flatten (CHW) and the dense layer's weight columns permuted to CHW
    order."""
    inits = {"w": rand(rng, 6, 3, 3, 3), "shape": np.array([1, -1]), "fcb": rand(rng, 7)}
    if dense == "Gemm":
        inits |= {"fc": rand(rng, 7, 4 * 5 * 6)}
        fc = [helper.make_node("Gemm", ["d", "fc", "fcb"], ["y"], transB=1, name="fc")]
    else:
        inits |= {"fc": rand(rng, 4 * 5 * 6, 7)}
        fc = [
            helper.make_node("MatMul", ["d", "fc"], ["m"], name="fc"),
            helper.make_node("Add", ["m", "fcb"], ["y"]),
        ]
    flat = (
        helper.make_node("Reshape", ["t", "shape"], ["f"], name="flat")
        if flatten == "Reshape"
        else helper.make_node("Flatten", ["t"], ["f"], name="flat")
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        flat,
        helper.make_node("Dropout", ["f"], ["d"]),
        *fc,
    ]
    path = save(tmp_path / "m.onnx", nodes, [1, 3, 4, 5], inits)
    g = matches_runtime(path, rand(rng, 1, 3, 4, 5))
    assert ops(g) == ["conv", "relu", "flatten", "linear"]
    assert g["flat"].out_shape == (120,)


@pytest.mark.parametrize(
    ("attrs", "ops_"),
    [
        ({"pads": [0, 0, 1, 1], "strides": [2, 2]}, ["pad", "conv"]),
        ({"pads": [1, 2, 0, 1]}, ["pad", "conv"]),
        ({"pads": [1, 2, 1, 2]}, ["conv"]),
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, ["pad", "conv"]),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, ["pad", "conv"]),
        ({"auto_pad": "SAME_UPPER"}, ["conv"]),
        ({"auto_pad": "VALID", "strides": [2, 1]}, ["conv"]),
    ],
)
def test_conv_padding(tmp_path, rng, attrs, ops_):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)]
    inits = {"w": rand(rng, 4, 3, 3, 3), "b": rand(rng, 4)}
    path = save(tmp_path / "m.onnx", nodes, [1, 3, 8, 8], inits)
    g = matches_runtime(path, rand(rng, 1, 3, 8, 8))
    assert ops(g) == ops_


def test_batchnormalization_nodes_fold(tmp_path, rng):
    def bn(name, x, y, c):
        inits.update(
            {
                f"{name}.g": rand(rng, c),
                f"{name}.b": rand(rng, c),
                f"{name}.m": rand(rng, c),
                f"{name}.v": rng.random(c).astype(np.float32) + 0.3,
            }
        )
        ins = [x] + [f"{name}.{k}" for k in "gbmv"]
        return helper.make_node("BatchNormalization", ins, [y], epsilon=1e-3, name=name)

    inits = {"w": rand(rng, 4, 2, 3, 3), "fc": rand(rng, 5, 16)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], name="conv"),
        bn("bn1", "c", "n", 4),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["h"], transB=1, name="fc"),
        bn("bn2", "h", "y", 5),
    ]
    path = save(tmp_path / "m.onnx", nodes, [1, 2, 5, 5], inits)
    g = matches_runtime(path, rand(rng, 1, 2, 5, 5))
    assert ops(g) == ["conv", "relu", "flatten", "linear"]


@pytest.mark.parametrize("opset", [2, 11, 18])
def test_pad_op(tmp_path, rng, opset):
    pads = [0, 0, 1, 2, 0, 0, 3, 0]  # top 1, left 2, bottom 3, right 0
    inits = {"w": rand(rng, 3, 2, 2, 2)}
    if opset == 2:
        pad = helper.make_node("Pad", ["x"], ["p"], pads=pads, name="pad")
    elif opset == 11:
        inits |= {"pads": np.array(pads), "zero": np.float32(0)}
        pad = helper.make_node("Pad", ["x", "pads", "zero"], ["p"], name="pad")
    else:
        inits |= {"pads": np.array([1, 2, 3, 0]), "axes": np.array([2, 3])}
        pad = helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad")
    nodes = [pad, helper.make_node("Conv", ["p", "w"], ["y"])]
    path = save(tmp_path / "m.onnx", nodes, [1, 2, 4, 5], inits, opset=opset)
    g = matches_runtime(path, rand(rng, 1, 2, 4, 5))
    assert g["pad"].pads == (2, 0, 1, 3)


def test_conv_bias_add_sum_globalmaxpool_reducemean_softmax(tmp_path, rng):
    inits = {
        "w": rand(rng, 4, 3, 3, 3),
        "cb": rand(rng, 4, 1, 1),
        "axes": np.array([2, 3]),
        "shape": np.array([0, -1]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["c", "cb"], ["cc"], name="bias"),
        helper.make_node("Relu", ["cc"], ["r"]),
        helper.make_node("Sum", ["r", "cc", "r"], ["s"], name="sum"),
        helper.make_node("GlobalMaxPool", ["s"], ["gm"]),
        helper.make_node("Reshape", ["gm", "shape"], ["gf"]),
        helper.make_node("ReduceMean", ["s", "axes"], ["rm"], keepdims=0),
        helper.make_node("Concat", ["gf", "rm"], ["cat"], axis=-1),
        helper.make_node("Identity", ["cat"], ["i"]),
        helper.make_node("Softmax", ["i"], ["y"]),
    ]
    path = save(tmp_path / "m.onnx", nodes, [1, 3, 5, 5], inits, opset=18)
    g = matches_runtime(path, rand(rng, 1, 3, 5, 5))
    assert ops(g) == [
        "conv",
        "relu",
        "add",
        "maxpool",
        "flatten",
        "avgpool",
        "flatten",
        "concat",
    ]
    assert g.host_tail == ("softmax",)
    np.testing.assert_allclose(g["conv"].bias, inits["cb"].reshape(-1))


def test_dynamic_input_shape_needs_input_shape(tmp_path, rng):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    path = save(tmp_path / "m.onnx", nodes, ["N", 3, "H", "W"], {"w": rand(rng, 2, 3, 3, 3)})
    one_line_error(
        path,
        "input 'x' has dynamic shape ['N', 3, 'H', 'W']",
        "--input-shape C,H,W",
    )
    g = matches_runtime(path, rand(rng, 2, 3, 6, 7), input_shape=(3, 6, 7))
    assert g.input_shape == (3, 6, 7) and g.output_shape == (2, 4, 5)
    one_line_error(path, "does not fit", input_shape=(4, 6, 7))
    one_line_error(path, "--input-shape", input_shape=(3, 0, 7))


# ---- real networks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(mlperf_tiny.MODELS))
def test_mlperf_tiny_models(tmp_path, rng, name):
    cls, _ = mlperf_tiny.MODELS[name]
    torch.manual_seed(0)
    model = randomize_bn(cls())
    path = export(model, cls.input_shape, tmp_path / f"{name}.onnx")
    x = rand(rng, 1, *cls.input_shape)
    g = matches_runtime(path, x, rtol=1e-4, atol=1e-5)
    assert sum(n.weight.size + n.bias.size for n in g.weighted()) == (
        mlperf_tiny.folded_parameters(model)
    )


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_torchvision_models(tmp_path, rng, monkeypatch, torchvision_models, arch):
    """Too large for any board (refused for that), their float forward still matches."""
    torch.manual_seed(0)
    model = getattr(torchvision_models, arch)(weights=None)
    # BN statistics of real activations, so that the output is not ~0 on random weights
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))
    path = export(model, (3, 64, 64), tmp_path / f"{arch}.onnx")
    one_line_error(path, "weights and biases, more than")
    monkeypatch.setattr(onnx_import, "check_sizes", lambda graph: None)
    x = rand(rng, 1, 3, 64, 64)
    want = runtime(path, x)
    got = onnx_import.from_onnx(path).float_forward(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ---- bad inputs: one line naming the node and its op type ----------------------------------


def conv_into(tmp_path, rng, node, x_shape=(1, 2, 5, 5), inits=None, opset=17):
    """Input → conv → ``node`` (reads "c", writes "y")."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), node]
    inits = {"w": rand(rng, 4, x_shape[1], 1, 1)} | (inits or {})
    return save(tmp_path / "bad.onnx", nodes, list(x_shape), inits, opset=opset)


@pytest.mark.parametrize(
    ("node", "inits", "needle"),
    [
        (
            helper.make_node("Conv", ["c", "w2"], ["y"], dilations=[2, 2], name="Conv_3"),
            {"w2": np.ones((2, 4, 3, 3))},
            "node 'Conv_3' (Conv): dilations [2, 2] are not supported (dilation 1 only)",
        ),
        (
            helper.make_node(
                "MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, name="mp"
            ),
            {},
            "node 'mp' (MaxPool): ceil_mode=1",
        ),
        (
            helper.make_node(
                "AveragePool", ["c"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="ap"
            ),
            {},
            "node 'ap' (AveragePool): count_include_pad=0",
        ),
        (
            helper.make_node(
                "MaxPool", ["c"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], name="mp"
            ),
            {},
            "node 'mp' (MaxPool): pads [0, 0, 1, 1] are asymmetric",
        ),
        (
            helper.make_node("Concat", ["c", "c"], ["y"], axis=2, name="cat"),
            {},
            "node 'cat' (Concat): axis 2 is not supported",
        ),
        (
            helper.make_node("Pad", ["c", "pads"], ["y"], mode="reflect", name="pad"),
            {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])},
            "node 'pad' (Pad): mode 'reflect' is not supported",
        ),
        (
            helper.make_node("Pad", ["c", "pads"], ["y"], name="pad"),
            {"pads": np.array([0, 1, 0, 0, 0, 0, 0, 0])},
            "node 'pad' (Pad): pads [0, 1, 0, 0, 0, 0, 0, 0] pad the batch or channel axis",
        ),
        (
            helper.make_node("LeakyRelu", ["c"], ["y"], name="n7"),
            {},
            "node 'n7' (LeakyRelu): unsupported ONNX op; supported are Conv",
        ),
        (helper.make_node("Tanh", ["c"], ["y"], name="t"), {}, "node 't' (Tanh): unsupported"),
        (
            helper.make_node("Mul", ["c", "k"], ["y"], name="scale"),
            {"k": np.float32(2)},
            "node 'scale' (Mul): unsupported ONNX op",
        ),
        (
            helper.make_node("Add", ["c", "k"], ["y"], name="shift"),
            {"k": np.ones((1, 1, 5))},
            "node 'shift' (Add): constant of shape [1, 1, 5] is not one value per output",
        ),
        (
            helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1], name="nhwc"),
            {},
            "the model's output 'y' is an NHWC transpose",
        ),
        (
            helper.make_node("Transpose", ["c"], ["y"], perm=[0, 1, 3, 2], name="tr"),
            {},
            "node 'tr' (Transpose): perm [0, 1, 3, 2] is not supported",
        ),
        (
            helper.make_node("Reshape", ["c", "s"], ["y"], name="rs"),
            {"s": np.array([1, 4, 25])},
            "node 'rs' (Reshape): reshape of (N, 4, 5, 5) to [1, 4, 25] is not supported",
        ),
        (
            helper.make_node("Flatten", ["c"], ["y"], axis=2, name="fl"),
            {},
            "node 'fl' (Flatten): axis 2 is not supported",
        ),
        (
            helper.make_node("Softmax", ["c"], ["y"], axis=1, name="sm"),
            {},
            "node 'sm' (Softmax): Softmax is supported only as the last op",
        ),
        (
            helper.make_node("Conv", ["c", "c"], ["y"], name="dyn"),
            {},
            "node 'dyn' (Conv): its weight 'c' must be a constant",
        ),
    ],
    ids=lambda v: v.op_type if isinstance(v, onnx.NodeProto) else None,
)
def test_unsupported_nodes(tmp_path, rng, node, inits, needle):
    one_line_error(conv_into(tmp_path, rng, node, inits=inits), needle)


def test_unsupported_structures(tmp_path, rng):
    def model(nodes, inits, x_shape=(1, 4), opset=17):
        return save(tmp_path / "bad.onnx", nodes, list(x_shape), inits, opset=opset)

    w = {"w": rand(rng, 4, 4)}
    # a softmax followed by a layer
    path = model(
        [
            helper.make_node("Softmax", ["x"], ["s"], name="sm"),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="mm"),
        ],
        w,
    )
    one_line_error(path, "node 'mm' (MatMul): follows a softmax")
    # an NHWC transpose read by something other than a flatten into a dense layer
    path = model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="t"),
            helper.make_node("Flatten", ["t"], ["f"], name="f"),
            helper.make_node("Relu", ["f"], ["y"], name="r"),
        ],
        {},
        x_shape=(1, 2, 3, 3),
    )
    one_line_error(path, "node 'r' (Relu): reads an NHWC-order flatten")
    # tensors of different shapes added (broadcasting)
    path = model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], name="m"),
            helper.make_node("Add", ["x", "m"], ["y"], name="add"),
        ],
        {},
        x_shape=(1, 2, 3, 3),
        opset=13,
    )
    one_line_error(path, "node 'add' (Add): adds tensors of shapes (N, 2, 3, 3), (N, 2, 1, 1)")
    # Gemm with transA
    path = model([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, name="g")], w, (4, 4))
    one_line_error(path, "node 'g' (Gemm): transA=1 is not supported")
    # a bias Add on a layer output that something else reads too
    path = model(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
            helper.make_node("Add", ["a", "m"], ["y"], name="add"),
        ],
        w | {"b": rand(rng, 4)},
    )
    one_line_error(path, "node 'bias' (Add): adds a constant to a tensor")
    # a model whose output does not depend on its input
    path = model([helper.make_node("Identity", ["w"], ["y"], name="i")], w)
    one_line_error(path, "bad.onnx: the model's output 'y' does not depend on its input")
    # an integer input
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "int.onnx"))
    one_line_error(tmp_path / "int.onnx", "input 'x' holds int64 values; a float tensor")


def test_unreadable_files(tmp_path, rng):
    good = export(Chain(), (3, 8, 8), tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:100])
    one_line_error(cut, f"{cut}: not a readable ONNX model")
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n" * 10)
    one_line_error(text, f"{text}: not a readable ONNX model")
    one_line_error(tmp_path / "none.onnx", "none.onnx: no such file")
