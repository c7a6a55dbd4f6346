"""Datasets and ONNX files that are damaged or hostile, and a board link that fails or answers
wrongly, end in one line naming the problem, before anything large is allocated."""

import io
import time
import zipfile

import numpy as np
import pytest
import serial
from test_run import SoftBoard, prog8

from fxpga.boards import protocol as P
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


@pytest.mark.parametrize("extra", [1 << 20, -4])
def test_a_member_longer_or_shorter_than_its_header_is_refused_unread(tmp_path, monkeypatch, extra):
    buf = io.BytesIO()
    np.save(buf, np.ones((4, 1, 8, 8), np.float32))
    body = buf.getvalue() + bytes(extra) if extra > 0 else buf.getvalue()[:extra]
    p = npz(tmp_path / "d.npz", x=body, y=np.zeros(4, np.int64))
    reads = []
    real = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda f, n=-1: reads.append(n) or real(f, n))
    held = 1024 + extra
    want = rf"'x' declares \(4, 1, 8, 8\) float32 \(1,024 bytes\) but its zip member holds {held:,}"
    with pytest.raises(FxpgaError, match=want):
        data.load_npz(p)
    assert all(0 <= n <= 1 << 16 for n in reads), reads  # the header only, never the data


def test_a_member_that_is_not_named_npy(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x", b"raw bytes")
    with pytest.raises(FxpgaError, match=r"d.npz: member 'x' is not a .npy array"):
        data.load_npz(tmp_path / "d.npz")


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


def test_an_op_of_another_domain_is_named_with_its_domain(tmp_path):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("FusedGemm", ["x"], ["unused"], name="fg", domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    want = (
        "node 'fg' is FusedGemm of the domain 'com.microsoft'; fxpga reads ONNX opsets "
        f"{onnx_import.MIN_OPSET}..{onnx_import.MAX_OPSET} of the default domain"
    )
    with pytest.raises(FxpgaError, match=want):
        onnx_import.from_onnx(tmp_path / "m.onnx")


# ---- fxpga run: a software board (test_run.SoftBoard) behind a fake serial port


@pytest.fixture
def board_run(digits_fxq, digits_q8, capsys, monkeypatch):
    """``run(board_class, *options)`` → (exit code, stderr) of ``fxpga run`` against a
    ``SoftBoard`` subclass running the digits model at 8 lanes."""
    prog = prog8(digits_q8)

    def run(cls=SoftBoard, *options, **kw):
        board = cls(prog, **kw)
        monkeypatch.setattr(serial, "serial_for_url", lambda *a, **k: board)
        code = main(["run", str(digits_fxq), "--port", "soft://", "--samples", "2", "-q", *options])
        return code, capsys.readouterr().err

    return run


def soft_board(**replies):
    """A SoftBoard whose reply to some commands (by name) is replaced: ``None`` is no reply,
    a callable ``f(board, payload)`` returns the reply's bytes."""

    class Board(SoftBoard):
        def write(self, data):
            for cmd, payload in P.Decoder().feed(bytes(data)):
                name = {P.IDENT: "ident", P.RUN: "run", P.READ_OUTPUT: "read"}.get(cmd)
                if name not in replies:
                    super().write(P.encode(cmd, payload))
                elif replies[name] is not None:
                    super().write(P.encode(cmd, payload))  # the board's state moves on
                    self.out = bytearray(P.encode(cmd | P.REPLY, replies[name](self, payload)))

    return Board


def test_run_timeout_applies_to_run(board_run):
    t = time.monotonic()
    code, err = board_run(soft_board(run=None), "--timeout", "0.1")
    assert code == 1 and "no reply from the board within 0.1 s" in err, err
    assert time.monotonic() - t < 3  # not a fixed 10 s


def test_run_waits_for_the_estimated_run_time():
    """RUN's reply comes once the inference is done: awaited for max(timeout, run_time)."""

    class SlowBoard:
        def __init__(self):
            self.dec, self.out, self.due = P.Decoder(), bytearray(), None

        def write(self, data):
            for cmd, _ in self.dec.feed(bytes(data)):
                if cmd == P.RUN:
                    self.due = time.monotonic() + 0.3
                elif cmd == P.READ_OUTPUT:
                    self.out += P.encode(cmd | P.REPLY, bytes([1, 2]) + bytes(4))
                else:
                    self.out += P.encode(cmd | P.REPLY)

        def read(self, n):
            if self.due is not None and time.monotonic() >= self.due:
                self.due, self.out = None, self.out + P.encode(P.RUN | P.REPLY)
            chunk, self.out = bytes(self.out[:n]), self.out[n:]
            return chunk

    ident = P.Ident(1, 8, 8, 8, 24, 1, 2, 2, bytes(8))
    link = P.Link(SlowBoard(), timeout=0.05, retries=0)
    assert link.infer([0, 0], ident, run_time=1.0) == ([1, 2], 0)
    with pytest.raises(FxpgaError, match="no reply from the board within 0.1 s"):
        link.infer([0, 0], ident)


@pytest.mark.parametrize("fails", ["read", "write"])
def test_run_with_the_adapter_unplugged_names_the_port(board_run, fails):
    class Unplugged(SoftBoard):
        """Answers IDENT, then its port fails."""

        calls = 0

        def write(self, data):
            self.calls += fails == "write"
            if self.calls > 1:
                raise OSError(5, "Input/output error")
            super().write(data)

        def read(self, n):
            self.calls += fails == "read"
            if self.calls > 1:
                raise serial.SerialException(
                    "device reports readiness to read but returned no data (device "
                    "disconnected or multiple access on port?)"
                )
            return super().read(n)

    code, err = board_run(Unplugged)
    what = {"read": "reading: device reports", "write": r"writing: [Errno 5] Input/output"}[fails]
    assert code == 1 and f"soft://: the serial port failed while {what}" in err, err
    assert err.count("\n") == 1


def test_a_short_read_output_reply_is_named(board_run, digits_q8):
    out_size = prog8(digits_q8).out_size
    code, err = board_run(soft_board(read=lambda b, _: bytes(3)))
    want = f"READ_OUTPUT reply has 3 bytes, expected {out_size + 4} ({out_size} outputs"
    assert code == 1 and want in err, err


def test_an_ident_whose_out_size_disagrees_is_named(board_run, digits_q8):
    out_size = prog8(digits_q8).out_size

    def ident(board, _):
        return P.Ident(**{**board.ident.__dict__, "out_size": out_size + 1}).pack()

    code, err = board_run(soft_board(ident=ident))
    want = f"soft://: the board's IDENT gives out_size {out_size + 1}, "
    assert code == 1 and want in err and f"program has {out_size}:" in err, err
