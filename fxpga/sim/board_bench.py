"""cocotb testbench of the board top through its UART pins, with the host protocol code.

The host side is ``fxpga.boards.protocol`` (framing, CRC, decoder, IDENT parsing, value
packing) driven over a bit-level UART model instead of pyserial. The job file lists
``actions``:

- ``{"do": "ident"}`` — IDENT; checks magic and the model hash;
- ``{"do": "infer", "sample": [...], "expected": [...]}`` — WRITE_INPUT, RUN, READ_OUTPUT;
- ``{"do": "cfg", "writes": [[addr, data], ...]}`` — CFG_WRITE per write;
- ``{"do": "corrupt"}`` — an IDENT frame with one flipped bit: expects a NAK (bad CRC);
- ``{"do": "truncate"}`` — half a WRITE_INPUT frame, silence past the byte timeout, then
  IDENT: expects a normal reply;
- ``{"do": "garbage"}`` — random bytes (no 0xA5) before an IDENT: expects a normal reply;
- ``{"do": "run_without_input"}`` — RUN right after reset: expects NAK (no input).
"""

from __future__ import annotations

import json
import os
import random
import struct

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

from fxpga.boards import protocol as P
from fxpga.errors import FxpgaError

CLOCK_NS = 10


class UART:
    """Bit-level UART on the DUT's ``rx`` (we drive) and ``tx`` (we sample) pins."""

    def __init__(self, dut, divisor):
        self.dut, self.div = dut, divisor
        self.decoder = P.Decoder()
        self.rx_bytes = []
        dut.rx.value = 1

    async def send(self, data: bytes):
        for b in data:
            for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
                self.dut.rx.value = bit
                await ClockCycles(self.dut.clk, self.div)

    async def receiver(self):
        while True:
            await FallingEdge(self.dut.tx)
            await ClockCycles(self.dut.clk, self.div // 2)
            if int(self.dut.tx.value):
                continue
            b = 0
            for i in range(8):
                await ClockCycles(self.dut.clk, self.div)
                b |= int(self.dut.tx.value) << i
            await ClockCycles(self.dut.clk, self.div)
            self.rx_bytes.append(b)

    async def reply(self, timeout_cycles: int):
        waited = 0
        while True:
            frames = self.decoder.feed(bytes(self.rx_bytes))
            self.rx_bytes.clear()
            if frames:
                return frames[0]
            if waited > timeout_cycles:
                raise FxpgaError(f"no reply within {timeout_cycles} cycles")
            await ClockCycles(self.dut.clk, 10 * self.div)
            waited += 10 * self.div

    async def request(self, cmd, payload=b"", timeout=400_000):
        await self.send(P.encode(cmd, payload))
        return P.check_reply(cmd, await self.reply(timeout))


@cocotb.test()
async def board(dut):
    with open(os.environ["FXPGA_SIM_JOB"]) as f:
        job = json.load(f)
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()
    uart = UART(dut, job["divisor"])
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    cocotb.start_soon(uart.receiver())
    rng = random.Random(job.get("seed", 0))
    log = []
    ident = None
    for act in job["actions"]:
        do = act["do"]
        if do == "ident":
            ident = P.Ident.parse(await uart.request(P.IDENT))
            ok = ident.model_hash.hex() == job["model_hash"]
            log.append({"do": do, "ok": ok, "lanes": ident.lanes, "in_size": ident.in_size})
        elif do == "infer":
            await uart.request(P.WRITE_INPUT, P.pack_values(act["sample"], ident.data_bits))
            await uart.request(P.RUN, timeout=5_000_000)
            reply = await uart.request(P.READ_OUTPUT)
            got = P.unpack_values(reply, ident.out_size, ident.data_bits)
            (cycles,) = struct.unpack("<I", reply[-4:])
            log.append({"do": do, "ok": got == act["expected"], "got": got, "cycles": cycles})
        elif do == "cfg":
            for addr, data in act["writes"]:
                await uart.request(P.CFG_WRITE, struct.pack("<II", addr, data & 0xFFFFFFFF))
            log.append({"do": do, "ok": True})
        elif do == "corrupt":
            frame = bytearray(P.encode(P.IDENT))
            pos = act.get("pos", rng.choice([1, 2, 4, 5]))  # cmd, length, CRC bytes
            frame[pos] ^= 1 << rng.randrange(8)
            await uart.send(bytes(frame))
            if pos == 2:  # a corrupted length: the board waits for a payload, then drops it
                try:
                    await uart.reply(job["byte_timeout"] + 100 * job["divisor"])
                    ok = False
                except FxpgaError:
                    ok = True
            else:
                cmd, payload = await uart.reply(100_000)
                ok = cmd == P.NAK and payload[0] == P.ERR_CRC
            log.append({"do": do, "ok": ok, "pos": pos})
            ident = P.Ident.parse(await uart.request(P.IDENT))  # and the board still works
        elif do == "truncate":
            frame = P.encode(P.WRITE_INPUT, bytes(ident.in_size))
            await uart.send(frame[: len(frame) // 2])
            await ClockCycles(dut.clk, job["byte_timeout"] + 50 * job["divisor"])
            ident = P.Ident.parse(await uart.request(P.IDENT))
            log.append({"do": do, "ok": True})
        elif do == "garbage":
            junk = bytes(rng.choice([b for b in range(256) if b != P.SYNC]) for _ in range(17))
            await uart.send(junk)
            ident = P.Ident.parse(await uart.request(P.IDENT))
            log.append({"do": do, "ok": True})
        elif do == "run_without_input":
            try:
                await uart.request(P.RUN)
                ok = False
            except FxpgaError as e:
                ok = "no input written" in str(e)
            log.append({"do": do, "ok": ok})
    await RisingEdge(dut.clk)
    with open(job["results"], "w") as f:
        json.dump({"log": log}, f)
