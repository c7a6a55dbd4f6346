"""The cocotb testbench for the engine's Verilog (runs inside the HDL simulator).

Driver → DUT → monitor, against a reference model (the golden outputs, computed on the host and
passed in the job file) with an in-order scoreboard. The input stream source stalls at random,
the output sink applies random backpressure. During computation Python waits on the output's
``valid`` edge instead of on clock edges, so the simulator runs at its own speed.

The job file (``FXPGA_SIM_JOB``) is JSON: ``samples`` (engine-order ints), ``expected``,
``stall`` (probability of a gap), ``seed``, ``results`` (where to write), and optional
``program`` rewrites (``cfg`` bus writes applied before each run, used to stop a program after
op k when locating a mismatch).
"""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, Timer

CLOCK_NS = 10


def high(sig) -> bool:
    """A 1-bit signal is 1 (X/Z before reset count as 0)."""
    try:
        return bool(sig.value)
    except ValueError:
        return False


class StreamSource:
    """Drives an Amaranth stream (``<name>__payload/valid/ready``) with random stalls."""

    def __init__(self, dut, name, clk, rng, stall):
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.clk, self.rng, self.stall = clk, rng, stall
        self.valid.value = 0

    async def send(self, values):
        for v in values:
            if self.stall and self.rng.random() < self.stall:
                self.valid.value = 0
                await ClockCycles(self.clk, self.rng.randint(1, 3))
            self.payload.value = int(v)
            self.valid.value = 1
            while True:
                await RisingEdge(self.clk)
                if high(self.ready):
                    break
        self.valid.value = 0


class StreamSink:
    """Receives ``n`` values from an Amaranth stream with random backpressure."""

    def __init__(self, dut, name, clk, rng, stall):
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.clk, self.rng, self.stall = clk, rng, stall
        self.ready.value = 0

    async def receive(self, n):
        out = []
        if not high(self.valid):
            await RisingEdge(self.valid)  # no per-cycle Python while the engine computes
            await FallingEdge(self.clk)
        while len(out) < n:
            self.ready.value = int(not (self.stall and self.rng.random() < self.stall))
            await RisingEdge(self.clk)
            if high(self.ready) and high(self.valid):
                out.append(self.payload.value.to_signed())
            await FallingEdge(self.clk)
        self.ready.value = 0
        return out


class Scoreboard:
    """In-order record of every inference: received outputs against the reference's."""

    def __init__(self):
        self.results = []


class TB:
    def __init__(self, dut, job):
        self.dut, self.job = dut, job
        rng = random.Random(job.get("seed", 0))
        stall = job.get("stall", 0.0)
        self.source = StreamSource(dut, "i", dut.clk, rng, stall)
        self.sink = StreamSink(dut, "o", dut.clk, rng, stall)
        self.scoreboard = Scoreboard()

    async def reset(self):
        self.dut.cfg__en.value = 0
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def write_cfg(self, writes):
        for addr, data in writes:
            self.dut.cfg__addr.value = addr
            self.dut.cfg__data.value = data & 0xFFFFFFFF
            self.dut.cfg__en.value = 1
            await RisingEdge(self.dut.clk)
        self.dut.cfg__en.value = 0

    async def infer(self, sample, n_out):
        sender = cocotb.start_soon(self.source.send(sample))
        out = await self.sink.receive(n_out)
        await sender
        return out, int(self.dut.cycles.value)


@cocotb.test()
async def run_job(dut):
    with open(os.environ["FXPGA_SIM_JOB"]) as f:
        job = json.load(f)
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()
    tb = TB(dut, job)
    await tb.reset()
    t0, ns0 = time.perf_counter(), get_sim_time("ns")
    for step in job.get("steps", [{}]):
        if step.get("cfg"):
            await tb.write_cfg(step["cfg"])
        n_out = step.get("out_size", job["out_size"])
        for i in step.get("samples", range(len(job["samples"]))):
            got, cycles = await tb.infer(job["samples"][i], n_out)
            want = step["expected"] if "expected" in step else job["expected"][i]
            tb.scoreboard.results.append(
                {"index": i, "got": got, "match": got == want, "cycles": cycles}
            )
    await Timer(1, unit="ns")
    with open(job["results"], "w") as f:
        json.dump(
            {
                "results": tb.scoreboard.results,
                "wall_s": time.perf_counter() - t0,
                "sim_cycles": round((get_sim_time("ns") - ns0) / CLOCK_NS),
            },
            f,
        )
