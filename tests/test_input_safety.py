"""Datasets and ONNX files that are damaged or hostile end in one line naming the problem,
before anything large is allocated."""

import io
import zipfile

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.quant import data, onnx_import


def npz(path, **members):
    """An .npz whose members are given as raw bytes (forged) or arrays."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            if isinstance(v, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, v)
                v = buf.getvalue()
            z.writestr(f"{k}.npy", v)
    return path


X = np.zeros((4, 1, 8, 8), np.float32)


def test_a_member_that_is_not_npy(tmp_path):
    p = npz(tmp_path / "d.npz", x=b"PK not an array", y=np.zeros(4, np.int64))
    with pytest.raises(FxpgaError, match=r"d.npz: 'x' is not a valid .npy array"):
        data.load_npz(p)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1, 8, 8)}
    )
    p = npz(tmp_path / "bomb.npz", x=header.getvalue() + bytes(1 << 20))
    reads = []
    real = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda f, n=-1: reads.append(n) or real(f, n))
    with pytest.raises(FxpgaError, match="'x' has 1,000,000,000 samples, more than 100,000"):
        data.load_npz(p)
    assert all(0 <= n <= 1 << 16 for n in reads), reads  # the header only, never the data


def test_a_bomb_behind_a_small_header_decompresses_only_what_it_declares(tmp_path):
    x = np.ones((4, 1, 8, 8), np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    p = npz(tmp_path / "d.npz", x=buf.getvalue() + bytes(50 << 20), y=np.zeros(4, np.int64))
    assert np.array_equal(data.load_npz(p).x_test, x)


def test_a_huge_unsigned_label_is_reported_as_itself(tmp_path):
    y = np.array([0, 1, 2, np.iinfo(np.uint64).max], np.uint64)
    p = npz(tmp_path / "d.npz", x=X, y=y)
    with pytest.raises(FxpgaError, match=r"label y\[3\] = 18446744073709551615 is not a class"):
        data.load_npz(p)


def test_data_naming_a_directory(tmp_path, capsys):
    (tmp_path / "dir.npz").mkdir()
    assert main(["quantize", "digits-cnn", "--data", str(tmp_path / "dir.npz"), "-o",
                 str(tmp_path / "m.fxq")]) == 1  # fmt: skip
    assert "dir.npz: is a directory; --data takes a .npz file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz"]


def _onnx(tmp_path, opset=17, external=False):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    if external:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        w.external_data.add(key="location", value="../../secret.bin")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[w],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p


@pytest.mark.parametrize("opset", [1, 99])
def test_unsupported_opsets_are_named(tmp_path, opset):
    p = _onnx(tmp_path, opset)
    want = f"opset {opset} is not supported; fxpga reads ONNX opsets {onnx_import.MIN_OPSET}.."
    with pytest.raises(FxpgaError, match=want):
        onnx_import.from_onnx(p)


def test_a_supported_opset_imports(tmp_path):
    assert onnx_import.from_onnx(_onnx(tmp_path, 13)).input_shape == (4,)


def test_legacy_axis_broadcasting_is_refused(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.ones(2, np.float32), "b")
    node = helper.make_node("Add", ["x", "b"], ["y"], name="add", broadcast=1, axis=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        initializer=[b],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    m.ir_version = 8
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(FxpgaError, match="broadcasting along an 'axis' .before opset 7"):
        onnx_import.from_onnx(tmp_path / "m.onnx")


def test_external_initializers_are_not_read(tmp_path):
    with pytest.raises(FxpgaError, match="external file|not a readable ONNX model"):
        onnx_import.from_onnx(_onnx(tmp_path, external=True))
