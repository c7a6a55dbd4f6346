"""The three ways in (a torch module, a torch.export .pt2, an ONNX export) give the same
.fxq; ONNX models and their bad inputs through ``fxpga quantize``."""

import json

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run

from fxpga.quant import artifact

# the legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not a dependency
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FACTORY = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.c4 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(x + self.c3(torch.relu(self.c2(x))))
        y = torch.cat([self.c4(x), torch.nn.functional.max_pool2d(x, 2)], dim=1)
        return self.fc(torch.flatten(torch.relu(y), 1))


def make():
    torch.manual_seed(3)
    return Net().eval()
"""


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory):
    """The same residual/depthwise/concat net as file.py:make, .pt2 and .onnx."""
    d = tmp_path_factory.mktemp("net")
    (d / "net.py").write_text(FACTORY)
    ns = {}
    exec(FACTORY, ns)
    model = ns["make"]()
    x = torch.zeros(1, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), d / "net.pt2")
    torch.onnx.export(model, (x,), d / "net.onnx", dynamo=False, input_names=["x"])
    dyn = {"x": {0: "N", 2: "H", 3: "W"}}
    torch.onnx.export(
        model, (x,), d / "dyn.onnx", dynamo=False, input_names=["x"], dynamic_axes=dyn
    )
    return d


def test_module_pt2_and_onnx_give_the_same_fxq(three_ways, tmp_path, capsys):
    fxq = {}
    for name, spec in [
        ("module", f"{three_ways / 'net.py'}:make"),
        ("pt2", str(three_ways / "net.pt2")),
        ("onnx", str(three_ways / "net.onnx")),
    ]:
        out = tmp_path / f"{name}.fxq"
        code, stdout, err = run(capsys, "quantize", spec, "--data", "digits", "-o", str(out), "-q")
        assert code == 0, err
        fxq[name] = artifact.load(out)
    ref = fxq["module"]
    assert [la.op for la in ref.layers].count("add") == 1
    assert [la.op for la in ref.layers].count("concat") == 1
    for other in ("pt2", "onnx"):
        qm = fxq[other]
        assert [la.op for la in qm.layers] == [la.op for la in ref.layers], other
        assert qm.input_fmt == ref.input_fmt
        for a, b in zip(qm.layers, ref.layers, strict=True):
            assert (a.in_fmts, a.out_fmt, a.w_fmt) == (b.in_fmts, b.out_fmt, b.w_fmt), other
            if a.w is not None:
                np.testing.assert_array_equal(a.w, b.w, err_msg=f"{other} {a.name}")
                np.testing.assert_array_equal(a.b, b.b, err_msg=f"{other} {a.name}")


def test_dynamic_onnx_needs_input_shape(three_ways, tmp_path, capsys):
    dyn, out = str(three_ways / "dyn.onnx"), tmp_path / "d.fxq"
    code, _, err = run(capsys, "quantize", dyn, "--data", "digits", "-o", str(out), "-q")
    assert_one_line_error(code, err, "give the per-sample shape with --input-shape C,H,W")
    assert not out.exists()
    argv = ["quantize", dyn, "--input-shape", "1,8,8", "--data", "digits", "-o", str(out), "-q"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and "top-1 on digits" in stdout, err
    prov = json.loads(out.read_text())["provenance"]
    assert prov["model"] == dyn and len(prov["file_sha256"]) == 64


def _hand_model(tmp_path, node, name="m.onnx"):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")
    graph = helper.make_graph([node], "g", [x], [y], initializer=[pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / name).write_bytes(model.SerializeToString())
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (("LeakyRelu", ["x"], ["y"], {"alpha": 0.1}), "node 'bad' (LeakyRelu): unsupported"),
        (("Concat", ["x", "x"], ["y"], {"axis": 2}), "node 'bad' (Concat)"),
        (
            ("MaxPool", ["x"], ["y"], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
            "node 'bad'",
        ),
        (("Pad", ["x", "p"], ["y"], {"mode": "reflect"}), "node 'bad' (Pad)"),
    ],
)
def test_bad_onnx_nodes_through_the_cli(tmp_path, capsys, node, why):
    from onnx import helper

    op, ins, outs, attrs = node
    path = _hand_model(tmp_path, helper.make_node(op, ins, outs, name="bad", **attrs))
    out = tmp_path / "o.fxq"
    code, _, err = run(capsys, "quantize", path, "--data", "noise:2x4x4", "-o", str(out), "-q")
    assert_one_line_error(code, err, why)
    assert not out.exists() and not (tmp_path / "o.fxq.npz").exists()


def test_broken_onnx_files_through_the_cli(three_ways, tmp_path, capsys):
    blob = (three_ways / "net.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(blob[: len(blob) // 3])
    (tmp_path / "text.onnx").write_text("not a model\n")
    for name in ("cut.onnx", "text.onnx"):
        out = tmp_path / "o.fxq"
        argv = ["quantize", str(tmp_path / name), "--data", "digits", "-o", str(out), "-q"]
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, f"{name}: not a readable ONNX model")
        assert not out.exists()
    code, _, err = run(capsys, "quantize", "digits-cnn", "--input-shape", "1,8,8", "-o", "x.fxq")
    assert_one_line_error(code, err, "--input-shape applies to an .onnx model only")
    code, _, err = run(capsys, "quantize", "m.onnx", "--input-shape", "1,x,8", "-o", "x.fxq")
    assert_one_line_error(code, err, "expected C,H,W or F", expect=2)


BAD_TORCH = {
    "dilation": ("nn.Conv2d(1, 2, 3, dilation=2)", "x", "dilation=(2, 2) is not supported"),
    "padding mode": (
        "nn.Conv2d(1, 2, 3, padding=1, padding_mode='reflect')",
        "x",
        "padding_mode='reflect'",
    ),
    "ceil_mode": ("nn.MaxPool2d(3, 2, ceil_mode=True)", "x", "ceil_mode=True is not supported"),
    "concat axis": ("nn.Conv2d(1, 1, 1)", "torch.cat([x, x], dim=3)", "along dim=3"),
    "leaky relu": ("nn.LeakyReLU(0.1)", "x", "LeakyReLU"),
}


@pytest.mark.parametrize("what", BAD_TORCH)
def test_bad_torch_layers_through_the_cli(tmp_path, capsys, what):
    layer, out_expr, why = BAD_TORCH[what]
    src = (
        "import torch\nimport torch.nn as nn\n\n\nclass M(nn.Module):\n"
        f"    def __init__(self):\n        super().__init__()\n        self.layer = {layer}\n\n"
        f"    def forward(self, x):\n        x = self.layer(x)\n        return {out_expr}\n\n\n"
        "def make():\n    return M()\n"
    )
    (tmp_path / "m.py").write_text(src)
    out = tmp_path / "o.fxq"
    argv = ["quantize", f"{tmp_path / 'm.py'}:make", "--data", "digits", "-o", str(out), "-q"]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, why)
    assert "node '" in err and not out.exists()
