"""``fxpga run`` against a software board behind a fake serial port."""

import os
import struct
import sys

import numpy as np
import pytest
import serial

from fxpga.boards import protocol as P
from fxpga.cli import main
from fxpga.hw import compiler
from fxpga.quant import artifact

sys.path.insert(0, os.path.dirname(__file__))


class SoftBoard:
    """Answers the protocol like the board top, computing with the compiler's program model.
    Corrupts the first request it sees if asked (to exercise retries)."""

    def __init__(self, prog, corrupt_first=False, silent=False, wrong_hash=False):
        self.prog, self.silent = prog, silent
        self.ident = P.ident_for(prog)
        if wrong_hash:
            self.ident = P.Ident(**{**self.ident.__dict__, "model_hash": bytes(8)})
        self.dec, self.out, self.input = P.Decoder(), bytearray(), None
        self.result, self.corrupt_first = None, corrupt_first
        self.weights_loaded = False

    def write(self, data):
        for cmd, payload in self.dec.feed(bytes(data)):
            if self.silent:
                continue
            if self.corrupt_first:
                self.corrupt_first = False
                self.out += P.encode(P.NAK, bytes([P.ERR_CRC, cmd]))
                continue
            if cmd == P.IDENT:
                self.out += P.encode(cmd | P.REPLY, self.ident.pack())
            elif cmd == P.WRITE_INPUT:
                self.input = P.unpack_values(payload, self.prog.in_size, 8)
                self.out += P.encode(cmd | P.REPLY)
            elif cmd == P.RUN:
                chw = compiler.hwc_to_chw(np.array(self.input)[None], self.prog.in_shape)
                y = compiler.run_program(self.prog, chw[0])
                self.result = compiler.chw_to_hwc(y[None], self.prog.out_shape)[0].tolist()
                self.out += P.encode(cmd | P.REPLY)
            elif cmd == P.CFG_WRITE:
                self.weights_loaded = True
                self.out += P.encode(cmd | P.REPLY)
            elif cmd == P.READ_OUTPUT:
                self.out += P.encode(
                    cmd | P.REPLY,
                    P.pack_values(self.result, 8) + struct.pack("<I", self.prog.total_cycles),
                )

    def read(self, n):
        chunk, self.out = bytes(self.out[:n]), self.out[n:]
        return chunk


@pytest.fixture
def fxq(tmp_path, digits_q8):
    digits_q8.provenance["dataset"] = "digits"
    artifact.save(digits_q8, tmp_path / "d.fxq")
    return tmp_path / "d.fxq"


def run(capsys, monkeypatch, board, *argv):
    monkeypatch.setattr(serial, "serial_for_url", lambda *a, **k: board)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def prog8(q):
    return compiler.compile_model(q, compiler.EngineConfig.for_model(q, 8))


def test_run_reports_accuracy_and_cycles(fxq, digits_q8, capsys, monkeypatch):
    board = SoftBoard(prog8(digits_q8), corrupt_first=True)
    code, out, err = run(
        capsys, monkeypatch, board, "run", str(fxq), "--port", "soft://", "--samples", "20", "-q"
    )
    assert code == 0, err
    assert "20 images, 0 mismatches against the golden model" in out
    assert f"{prog8(digits_q8).total_cycles:,}" in out


def test_run_finds_the_board_engine(tmp_path, capsys, monkeypatch):
    """IDENT gives lanes, post-processing lanes and the weight store, not the rest of the
    engine a board builds (here the ULX3S's for narrow convs at 64 lanes: channel-split,
    which lays its weights out otherwise): fxpga run finds it by the program's hash and runs
    it."""
    from test_hw import narrow_net, quantized

    from fxpga.boards import build as boards

    qm, _ = quantized(*narrow_net(), 5)
    qm.provenance["dataset"] = str(tmp_path / "data.npz")
    x = np.random.default_rng(0).standard_normal((6, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.zeros(6, dtype=np.int64))
    artifact.save(qm, tmp_path / "s.fxq")
    cfg = boards.board("ulx3s-85f").engine_config(qm, 64)
    assert cfg.channel_split
    prog = compiler.compile_model(qm, cfg)
    plain = compiler.EngineConfig.for_model(qm, 64)
    assert P.model_hash(prog) != P.model_hash(compiler.compile_model(qm, plain))
    board = SoftBoard(prog)
    code, out, err = run(
        capsys, monkeypatch, board, "run", str(tmp_path / "s.fxq"), "--port", "soft://", "-q"
    )
    assert code == 0, err
    assert "6 images, 0 mismatches against the golden model" in out


def test_run_refuses_a_different_model(fxq, digits_q8, capsys, monkeypatch):
    board = SoftBoard(prog8(digits_q8), wrong_hash=True)
    code, _, err = run(capsys, monkeypatch, board, "run", str(fxq), "--port", "soft://", "-q")
    assert code == 1 and "runs a different model or engine" in err


def test_run_times_out(fxq, digits_q8, capsys, monkeypatch):
    board = SoftBoard(prog8(digits_q8), silent=True)
    code, _, err = run(
        capsys, monkeypatch, board, "run", str(fxq), "--port", "soft://", "--timeout", "0.2", "-q"
    )
    assert code == 1 and "no reply from the board within 0.2 s" in err


def test_run_bad_port(fxq, capsys):
    code = main(["run", str(fxq), "--port", "/dev/nonexistent-fxpga", "-q"])
    _, err = capsys.readouterr()
    assert code == 1 and "cannot open the serial port" in err
