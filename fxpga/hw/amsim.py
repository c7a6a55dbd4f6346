"""Run an ``Engine`` in Amaranth's Python simulator (tests and benches; slow but exact)."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from ..errors import FxpgaError
from .compiler import Program
from .engine import Engine


class Hang(Exception):
    """The engine did not hand over a stream word within the cycles it was given."""


async def _handshake(ctx, s, flag, budget):
    """Tick until ``flag`` is high at a clock edge; return the payload then. ``budget``: a
    one-element list of cycles left, spent here; ``Hang`` when it runs out."""
    while True:
        if budget is not None:
            if budget[0] <= 0:
                raise Hang()
            budget[0] -= 1
        _clk, _rst, payload, high = await ctx.tick().sample(s.payload, flag)
        if high:
            return payload


async def stream_put(ctx, s, payload, budget=None):
    ctx.set(s.valid, 1)
    ctx.set(s.payload, int(payload))
    await _handshake(ctx, s, s.ready, budget)
    ctx.set(s.valid, 0)


async def stream_get(ctx, s, budget=None):
    ctx.set(s.ready, 1)
    payload = await _handshake(ctx, s, s.valid, budget)
    ctx.set(s.ready, 0)
    return payload


def run_engine(
    prog: Program,
    x_int: np.ndarray,
    *,
    gaps=None,
    engine: Engine | None = None,
    vcd: str | None = None,
    op_trace: bool = False,
):
    """Run integer samples ``x_int`` (N, ...) through the engine.

    Returns (outputs in C-order, cycles per sample[, per-op cycles per sample]). ``gaps`` (a
    random.Random) inserts random stalls on the input stream and backpressure on the output.
    An engine that has not returned every output within 4x the cycles the program should take
    (stalls included) plus 10,000 is an error, not a hang.
    """
    dut = engine or Engine(prog.config, prog)
    xs = prog.to_engine(np.asarray(x_int, dtype=np.int64))  # HWC, as the engine stores it
    outs, cycles, op_cycles = [], [], []
    io = prog.in_size + prog.out_size
    budget = 10_000 + 4 * len(xs) * (prog.total_cycles + 4 * io)
    left, hung = [budget], []

    async def bench(ctx):
        try:
            for x in xs:
                for v in x:
                    if gaps is not None and gaps.random() < 0.2:
                        await ctx.tick().repeat(gaps.randint(1, 3))
                    await stream_put(ctx, dut.i, v, left)
                got = []
                for _ in range(prog.out_size):
                    if gaps is not None and gaps.random() < 0.2:
                        await ctx.tick().repeat(gaps.randint(1, 3))
                    got.append(await stream_get(ctx, dut.o, left))
                outs.append(got)
                cycles.append(ctx.get(dut.cycles))
        except Hang:  # (ends the bench, and so the run, cleanly)
            hung.append(True)

    async def tracer(ctx):
        # the cycle counter restarts at 0 with each inference's first descriptor fetch; an op
        # ends where the next one's index appears, the last one where running drops
        prev_op, start, cur = None, 0, []
        async for _clk, _rst, running, op_i, cyc in ctx.tick().sample(
            dut.running, dut.op_index, dut.cycles
        ):
            if running and prev_op is None:
                prev_op, start, cur = op_i, 0, []
            elif running and op_i != prev_op:
                cur.append(cyc - start)
                prev_op, start = op_i, cyc
            elif not running and prev_op is not None:
                cur.append(cyc - start)
                op_cycles.append(cur)
                prev_op = None

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if op_trace:
        sim.add_process(tracer)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    if hung:
        raise FxpgaError(
            f"the engine returned {len(outs)} of {len(xs)} outputs in {budget:,} cycles "
            f"(the program takes {prog.total_cycles:,} per inference): it hangs"
        )
    res = (prog.from_engine(np.array(outs, dtype=np.int64)), cycles)
    return (*res, op_cycles) if op_trace else res
