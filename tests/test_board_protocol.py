"""The host protocol: sans-IO framing, and the board top through its UART pins in cocotb."""

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from fxpga.boards import protocol as P
from fxpga.boards.top import BoardTop
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.hw.compiler import EngineConfig
from fxpga.quant import golden
from fxpga.sim import runner, simulate

sys.path.insert(0, os.path.dirname(__file__))
from test_hw import quantized, random_net  # noqa: E402


def test_crc_check_value():
    assert P.crc16(b"123456789") == 0x29B1


def test_decoder_resyncs_after_garbage_and_bad_frames():
    rng = random.Random(0)
    frames = [(P.IDENT, b""), (P.WRITE_INPUT, bytes(range(64))), (P.READ_OUTPUT | 0x80, b"xy")]
    stream = bytearray(bytes(rng.randrange(256) for _ in range(50)).replace(b"\xa5", b""))
    for cmd, payload in frames:
        bad = bytearray(P.encode(cmd, payload))
        bad[-1] ^= 0xFF  # a corrupted copy first
        stream += bad + P.encode(cmd, payload)
    d = P.Decoder()
    got = []
    for i in range(0, len(stream), 7):  # arbitrary chunking
        got += d.feed(bytes(stream[i : i + 7]))
    assert got == frames and d.dropped > 0


def test_truncated_frame_waits_then_completes():
    d = P.Decoder()
    f = P.encode(P.RUN, b"abc")
    assert d.feed(f[:5]) == [] and d.feed(f[5:]) == [(P.RUN, b"abc")]


def test_replies_are_checked():
    with pytest.raises(FxpgaError, match="refused command 0x03: no input written"):
        P.check_reply(P.RUN, (P.NAK, bytes([P.ERR_NO_INPUT, P.RUN])))
    with pytest.raises(FxpgaError, match="unexpected reply 0x81 to command 0x03"):
        P.check_reply(P.RUN, (0x81, b""))
    with pytest.raises(FxpgaError, match="not an fxpga engine"):
        P.Ident.parse(b"nope")


class FakePort:
    """A serial port whose board never answers."""

    def write(self, data):
        pass

    def read(self, n):
        return b""


def test_link_times_out_instead_of_hanging():
    link = P.Link(FakePort(), timeout=0.05, retries=0)
    with pytest.raises(FxpgaError, match=r"no reply from the board within 0.1 s"):
        link.identify()


SPRAM_MODEL = Path(P.__file__).parent / "sim_models" / "sb_spram256ka.v"


@pytest.mark.sim
@pytest.mark.parametrize("mode", ["baked", "runtime", "spram"])
def test_board_top_over_uart(mode, tmp_path):
    """IDENT, inference, CRC errors, truncated frames, garbage. "runtime": program, biases
    and weights loaded over CFG_WRITE first; "spram": weights in (a model of) the UP5K's
    SPRAM, loaded over CFG_WRITE, the rest baked."""
    bake = mode != "runtime"
    model, shape = random_net(random.Random(11), pools=True)
    qm, x = quantized(model, shape, 11)
    store = "spram" if mode == "spram" else "bram"
    prog = compiler.compile_model(qm, EngineConfig(lanes=3, weight_store=store))
    divisor, timeout = 8, 400
    top = BoardTop(prog, divisor, byte_timeout=timeout, bake=bake)
    from amaranth.back import verilog

    text = verilog.convert(top, name="fxpga_board")
    extra = (SPRAM_MODEL,) if mode == "spram" else ()
    build_dir = runner.build(
        None, "verilator", verilog=text, top="fxpga_board", extra_sources=extra
    )
    xi = golden.quantize_input(qm, x[:2])
    want = prog.words(
        simulate.to_engine_order(golden.run_int(qm, xi).reshape(2, -1), prog.out_shape)
    )
    samples = prog.to_engine(xi)
    actions = []
    if mode == "runtime":
        actions += [{"do": "cfg", "writes": runner.load_writes(prog)}]
    elif mode == "spram":
        from fxpga.hw.engine import REGION_WEIGHTS

        actions += [
            {
                "do": "cfg",
                "writes": [
                    (REGION_WEIGHTS << 28 | lane << 20 | i, w)
                    for lane, bank in enumerate(prog.wmem)
                    for i, w in enumerate(bank)
                ],
            }
        ]
    actions += [
        {"do": "run_without_input"},
        {"do": "ident"},
        {"do": "infer", "sample": samples[0].tolist(), "expected": want[0].tolist()},
        {"do": "corrupt", "pos": 1},
        {"do": "corrupt", "pos": 2},
        {"do": "corrupt", "pos": 5},
        {"do": "truncate"},
        {"do": "garbage"},
        {"do": "infer", "sample": samples[1].tolist(), "expected": want[1].tolist()},
    ]
    job = {
        "divisor": divisor,
        "byte_timeout": timeout,
        "actions": actions,
        "model_hash": P.model_hash(prog).hex(),
    }
    res, log = runner.run_cocotb(
        build_dir, "verilator", "fxpga.sim.board_bench", job, tmp_path, top="fxpga_board"
    )
    entries = res["log"]
    assert [e["do"] for e in entries] == [a["do"] for a in actions]
    assert all(e["ok"] is True for e in entries), entries
    infers = [e for e in entries if e["do"] == "infer"]
    assert [e["cycles"] for e in infers] == [prog.total_cycles] * 2
    assert np.array_equal(infers[0]["got"], want[0])
