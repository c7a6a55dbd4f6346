"""The engine in Amaranth's simulator: components against Python models, whole networks
bit-exact against the golden model, cycle counts against the compiler's estimate."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from amaranth.sim import Simulator

from fxpga.errors import FxpgaError
from fxpga.hw import amsim, compiler
from fxpga.hw.buffers import FeatureBuffer
from fxpga.hw.compiler import EngineConfig
from fxpga.hw.desc import coord_bits_for
from fxpga.hw.engine import Engine
from fxpga.hw.mac import MACArray
from fxpga.hw.postproc import PostProcessor
from fxpga.hw.taps import TapGenerator
from fxpga.quant import frontend, golden, quantizer
from fxpga.quant.qformat import avg_round, requantize

# ---- models of the components ---------------------------------------------------------------


def ref_taps(d: dict, lanes: int, items: int):
    """Cycle-by-cycle taps of one op: (mac, addr, w_addr, last[, padwin, first, lastpool,
    out_addr, b_addr, nvalid]), addresses only where they matter. HWC feature maps.
    Written from the descriptor's meaning, not from the hardware's incremental terms."""
    out = []
    C, H, W = d["c_max"] + 1, d["H"], d["W"]
    KH, KW = d["CKK"] // (C * (d["kx_max"] + 1)), d["kx_max"] + 1
    sh, sw = d["SH"], d["SW"]
    ph, pw = -(d["iy0"] - d["oy0"] * sh), -(d["ix0"] - d["ox0"] * sw)  # conv padding
    PKH, PKW = d["dy_max"] + 1, d["dx_max"] + 1
    G = d["g_max"] + 1
    for g in range(G):
        for py in range(d["py_max"] + 1):
            for px in range(d["px_max"] + 1):
                out_addr = d["out_base"] + g * lanes + (py * (d["px_max"] + 1) + px) * d["O"]
                for dy in range(PKH):
                    for dx in range(PKW):
                        oy = d["oy0"] + py * d["PSH"] + dy
                        ox = d["ox0"] + px * d["PSW"] + dx
                        pad = not (0 <= oy < d["OH"] and 0 <= ox < d["OW"])
                        meta = (pad, dy == 0 and dx == 0, dy == PKH - 1 and dx == PKW - 1,
                                out_addr, d["b_base"] + g * items,
                                d["O_last"] if g == G - 1 else lanes)  # fmt: skip
                        taps = []
                        if pad:
                            taps.append((0, None, None))
                        else:
                            for ky in range(KH):
                                for kx in range(KW):
                                    for c in range(C):
                                        iy, ix = oy * sh - ph + ky, ox * sw - pw + kx
                                        inside = 0 <= iy < H and 0 <= ix < W
                                        w = d["w_base"] + g * d["CKK"] + len(taps)
                                        a = (iy * W + ix) * C + c if inside else None
                                        taps.append((int(inside), a, w))
                        n = len(taps)
                        out += [(0, None, None, 0)] * (max(n, items) - n)  # bubbles first
                        for t in range(n):
                            mac, addr, w = taps[t]
                            row = (mac, addr, w if mac else None, int(t == n - 1))
                            out.append(row + (meta if t == n - 1 else ()))
    return out


ACTIVATIONS = (nn.ReLU, nn.ReLU, nn.ReLU6, lambda: nn.Hardtanh(-0.5, 1.0))


def random_net(rng: random.Random, pools=True, groups=False):
    """A small random supported chain, with its input shape: convs (some after an asymmetric
    zero pad, as TF's 'SAME' exports; with ``groups`` some grouped or depthwise), ReLU or
    clips (ReLU6, Hardtanh), pools, a linear."""
    c, h, w = rng.randint(1, 3), rng.randint(3, 7), rng.randint(3, 7)
    shape, mods = (c, h, w), []
    for _ in range(rng.randint(1, 2)):
        co, k = rng.randint(1, 6), rng.choice([1, 2, 3])
        p, s = rng.randint(0, k // 2), rng.choice([1, 1, 2])
        pads = tuple(rng.randint(0, 1) for _ in range(4))  # left, right, top, bottom
        ph, pw = h + pads[2] + pads[3], w + pads[0] + pads[1]  # padded, if it fits
        if rng.random() < 0.3 and c * ph * pw <= 300 and min(ph, pw) + 2 * p >= k:
            mods.append(nn.ZeroPad2d(pads))
            h, w = ph, pw
        if h + 2 * p < k or w + 2 * p < k:
            continue
        g = 1
        if groups and rng.random() < 0.5:  # depthwise (co a multiple of c) or grouped
            if rng.random() < 0.5:
                co = c * rng.randint(1, 2)
            g = rng.choice([d for d in range(2, c + 1) if c % d == 0 and co % d == 0] or [1])
        mods.append(nn.Conv2d(c, co, k, stride=s, padding=p, groups=g, bias=rng.random() < 0.7))
        c, h, w = co, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if rng.random() < 0.6:
            mods.append(rng.choice(ACTIVATIONS)())
        if pools and h >= 2 and w >= 2 and rng.random() < 0.6:
            ps, pp = rng.choice([1, 2]), rng.randint(0, 1)
            mods.append(rng.choice([nn.MaxPool2d, nn.AvgPool2d])(2, ps, pp))
            h, w = (h + 2 * pp - 2) // ps + 1, (w + 2 * pp - 2) // ps + 1
            if rng.random() < 0.3:
                mods.append(rng.choice(ACTIVATIONS)())
    mods.append(nn.Flatten())
    mods.append(nn.Linear(c * h * w, rng.randint(1, 7)))
    return nn.Sequential(*mods), shape


def quantized(model, shape, seed, bits=8, wbits=None, per_channel=False, unsigned=False):
    """Qiu et al.'s formats (the qiu scheme), and with ``per_channel`` each output channel's
    weights scaled by 2^u, u uniform in [-3, 3], and quantized with a format per channel;
    with ``unsigned``, unsigned formats where tensors cannot be negative, the input among
    them (its samples' absolute values)."""
    torch.manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            nn.init.uniform_(mod.weight, -0.8, 0.8)
            if per_channel:
                scale = 2.0 ** torch.empty(mod.weight.shape[0]).uniform_(-3, 3)
                with torch.no_grad():
                    mod.weight.mul_(scale.reshape(-1, *[1] * (mod.weight.dim() - 1)))
            if mod.bias is not None:
                nn.init.uniform_(mod.bias, -0.5, 0.5)
    g = frontend.from_module(model.eval(), shape)
    x = np.random.default_rng(seed).standard_normal((24, *shape))
    if unsigned:
        x = np.abs(x)
    widths = quantizer.Widths(bits, wbits, wbits)
    kw = {"unsigned": unsigned, "input_unsigned": unsigned}
    qm = quantizer.quantize_model(g, x[:16], widths, "qiu", per_channel=per_channel, **kw)
    return qm, x[16:]


def check_engine(qm, x, lanes, n=2, gaps=None, config=None):
    prog = compiler.compile_model(qm, config or EngineConfig(lanes=lanes))
    xi = golden.quantize_input(qm, x[:n])
    want = golden.run_int(qm, xi).reshape(n, -1)
    for i in range(n):  # the compiler's layout, checked without hardware
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i])
    got, cycles, per_op = amsim.run_engine(prog, xi, gaps=gaps, op_trace=True)
    np.testing.assert_array_equal(got, want)
    assert cycles == [prog.total_cycles] * n
    assert per_op == [prog.estimate] * n
    return prog


# ---- components -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_tap_generator_matches_model(seed):
    rng = random.Random(seed)
    lanes, post = rng.choice([(1, 1), (3, 1), (8, 1), (8, 4), (16, 2)])
    model, shape = random_net(rng)
    qm, _ = quantized(model, shape, seed)
    cfg = EngineConfig(lanes=lanes, post_lanes=post)
    prog = compiler.compile_model(qm, cfg)
    for d in prog.descriptors:
        want = ref_taps(d, lanes, cfg.items)
        dut = TapGenerator(lanes, cfg.items, coord_bits=coord_bits_for(prog.descriptors))
        got = []

        n_taps = len(want)

        async def bench(ctx, d=d, dut=dut, got=got, n=n_taps):
            for k, v in d.items():
                ctx.set(getattr(dut.desc, k), v)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for _ in range(TapGenerator.LATENCY - 1):
                assert ctx.get(dut.busy) and not ctx.get(dut.tap.mac) | ctx.get(dut.tap.last)
                await ctx.tick()
            for _ in range(n):
                t = dut.tap
                mac, addr, w, last = (
                    ctx.get(t.mac),
                    ctx.get(t.addr),
                    ctx.get(t.w_addr),
                    ctx.get(t.last),
                )
                row = (mac, addr if mac else None, w if mac else None, last)
                if last:
                    row += (
                        bool(ctx.get(t.padwin)),
                        bool(ctx.get(t.pool_first)),
                        bool(ctx.get(t.pool_last)),
                        ctx.get(t.out_addr),
                        ctx.get(t.b_addr),
                        ctx.get(t.nvalid),
                    )
                assert ctx.get(dut.busy)
                got.append(row)
                await ctx.tick()
            assert ctx.get(dut.done) and not ctx.get(dut.busy)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        assert got == want


@pytest.mark.parametrize("read_reg", [False, True])
@pytest.mark.parametrize("write_reg", [0, 1, 2])
@pytest.mark.parametrize("banks", [1, 2, 4, 16])
def test_feature_buffer_unaligned_vector_writes(banks, write_reg, read_reg):
    """Vector writes at any address (element i → wr_addr + i where wr_en[i]) and reads one
    cycle later (two with ``read_reg``), against a dict; depth not a multiple of the banks.
    With ``write_reg`` a write reaches the memory ``write_reg`` cycles later (2: through each
    bank's copy of the write, then its register after the rotation): a read issued in the
    cycle it lands sees the old value, one issued the cycle after that the new one.
    ``rd_banks`` holds the row's words, bank by bank."""
    rng = random.Random(banks * 3 + write_reg)
    depth = 7 * banks + 3
    dut = FeatureBuffer(depth, 8, banks, 10, write_reg=write_reg, read_reg=read_reg)
    model = {}
    ops = []
    for _ in range(300):
        addr = rng.randrange(depth - banks + 1)
        vals = [rng.randint(-128, 127) for _ in range(banks)]
        ens = [int(rng.random() < 0.7) for _ in range(banks)]
        # (with the registers, read back what was just written half of the time)
        rd = addr + rng.randrange(banks) if write_reg and rng.random() < 0.5 else None
        ops.append((addr, vals, ens, rng.randrange(depth) if rd is None else rd))

    async def bench(ctx):
        pending = []  # writes presented, not yet in the memory
        reads = []  # (address, the model's words at the time of the read)
        for addr, vals, ens, rd in ops:
            ctx.set(dut.wr_addr, addr)
            ctx.set(dut.rd_addr, rd)
            for i in range(banks):
                ctx.set(dut.wr_data[i], vals[i])
                ctx.set(dut.wr_en[i], ens[i])
            await ctx.tick()
            row = rd - rd % banks
            reads.append((rd, dict(model), [row + b for b in range(banks)]))
            if len(reads) > int(read_reg):
                a, seen, words = reads.pop(0)
                if a in seen:  # (read-before-write: the old value)
                    assert ctx.get(dut.rd_data) == seen[a], (addr, a)
                got = [ctx.get(dut.rd_banks[b]) for b in range(banks)]
                assert all(got[b] == seen[w] for b, w in enumerate(words) if w in seen)
            pending.append({addr + i: vals[i] for i in range(banks) if ens[i]})
            if len(pending) > int(write_reg):
                model.update(pending.pop(0))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(model) > depth * 0.9


@pytest.mark.parametrize("read_reg", [False, True])
@pytest.mark.parametrize("write_reg", [0, 1, 2])
@pytest.mark.parametrize(("banks", "bits"), [(1, 16), (2, 8), (4, 4)])
def test_feature_buffer_in_spram(banks, bits, write_reg, read_reg):
    """``store="spram"`` (the primitive's behaviour off iCE40): bank b is a slice of a 16-bit
    word, one value written per cycle through its slice's mask, the other slices kept; a
    read one cycle later (two with ``read_reg``) sees every write that reached the port
    before it. The port is single: a read issued in the cycle a write takes it (``write_reg``
    cycles after it is presented) is not checked. Against a dict; depth not a
    multiple of the banks."""
    rng = random.Random(banks * 10 + write_reg)
    depth = 9 * banks + 3
    dut = FeatureBuffer(
        depth, bits, banks, 10, write_reg=write_reg, read_reg=read_reg, store="spram"
    )
    lo, hi = -(1 << bits - 1), (1 << bits - 1) - 1
    ops = [
        (rng.random() < 0.5, rng.randrange(depth), rng.randint(lo, hi), rng.randrange(depth))
        for _ in range(400)
    ]

    async def bench(ctx):
        pending, reads, model, checked = [], [], {}, 0
        for write, addr, val, rd in ops:
            ctx.set(dut.wr_addr, addr)
            ctx.set(dut.wr_data[0], val)
            ctx.set(dut.wr_en[0], write)
            ctx.set(dut.rd_addr, rd)
            # the write that takes the port this cycle: this one, or the one before it
            pending.append((addr, val) if write else None)
            lands = pending.pop(0) if len(pending) > int(write_reg) else None
            await ctx.tick()
            row = rd - rd % banks
            words = [row + b for b in range(banks)]
            reads.append(None if lands else (rd, dict(model), words))
            if lands:
                model[lands[0]] = lands[1]
            if len(reads) > int(read_reg):
                r = reads.pop(0)
                if r is not None:
                    a, seen, words = r
                    if a in seen:
                        assert ctx.get(dut.rd_data) == seen[a], a
                        checked += 1
                    got = [ctx.get(dut.rd_banks[b]) for b in range(banks)]
                    assert all(got[b] == seen[w] for b, w in enumerate(words) if w in seen)
        assert checked > 50 and len(model) > depth * 0.8

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("read_reg", [False, True])
@pytest.mark.parametrize("banks", [1, 2, 4, 8])
def test_feature_buffer_wide_reads(banks, read_reg):
    """The wide read (EngineConfig.branches): ``banks`` consecutive words from any address,
    three cycles later (four with ``read_reg``), while narrow reads are off; against a
    dict."""
    rng = random.Random(banks + 50)
    depth = 5 * banks + 3
    dut = FeatureBuffer(depth, 8, banks, 10, wide_read=True, read_reg=read_reg)
    lat = dut.wide_latency
    model = {a: rng.randint(-128, 127) for a in range(depth)}

    async def bench(ctx):
        ctx.set(dut.wrd_en, 1)
        for a, v in model.items():  # fill it, a word at a time
            ctx.set(dut.wr_addr, a)
            ctx.set(dut.wr_data[0], v)
            ctx.set(dut.wr_en[0], 1)
            await ctx.tick()
        ctx.set(dut.wr_en[0], 0)
        issued = []
        for _ in range(200):
            addr = rng.randrange(depth - banks + 1)
            ctx.set(dut.wrd_addr, addr)
            await ctx.tick()
            issued.append(addr)
            if len(issued) > lat - 1:
                a = issued[-lat]
                got = [ctx.get(dut.wrd_data[i]) for i in range(banks)]
                assert got == [model[a + i] for i in range(banks)], a

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "pre,groups,clear", [(0, 1, False), (1, 1, False), (2, 1, False), (1, 1, True), (1, 2, True)]
)
def test_mac_array_wraps_and_gates(rng, pre, groups, clear):
    """``acc`` wraps modulo 2^acc_bits and ``en`` gates the product. ``clear=True``: ``acc ←
    (clear ? 0 : acc) + p``; with groups, ``clear`` comes from register copies of
    ``clear_next`` (``clear`` one cycle early), and ``a`` and ``en`` are presented a cycle
    before their ``w``."""
    lanes, D, W, A = 3, 8, 8, 12
    dut = MACArray(lanes, D, W, A, pre=pre, groups=groups, clear=clear)
    latency = MACArray.LATENCY + pre + (groups > 1)
    n = 300 if clear else 200
    ops = [
        (
            int(rng.integers(0, 2)),
            int(rng.integers(-128, 128)),
            [int(v) for v in rng.integers(-128, 128, lanes)],
        )
        for _ in range(n)
    ]
    clears = [int(clear and rng.random() < 0.15) for _ in range(n + latency + 1)]

    async def bench(ctx):
        ref = [0] * lanes
        hist = []
        stream = ops + [(0, 0, [0] * lanes)] * latency
        d = int(groups > 1)
        for t, (en, a, ws) in enumerate(stream):
            ctx.set(dut.en, en)
            ctx.set(dut.a, a)
            ctx.set(dut.clear, clears[t])
            ctx.set(dut.clear_next, clears[t + 1])
            for lane in range(lanes):
                ctx.set(dut.w[lane], stream[t - d][2][lane] if t >= d else 0)
            hist.append((en, a, ws))
            await ctx.tick()
            if len(hist) >= latency:
                e, aa, ww = hist[-latency]
                for lane in range(lanes):
                    ref[lane] = (0 if clears[t] else ref[lane]) + e * aa * ww[lane]
                    want = (ref[lane] + 2 ** (A - 1)) % 2**A - 2 ** (A - 1)
                    assert ctx.get(dut.acc[lane]) == want
            else:  # before the first product arrives (a clear leaves 0 too)
                assert all(ctx.get(dut.acc[lane]) == 0 for lane in range(lanes))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "snapshots,channel_shifts,post_lanes",
    [(s, False, p) for s in (True, False) for p in (1, 2, 4)]
    + [(False, True, 1), (False, True, 4)],
)
@pytest.mark.parametrize(
    "pool_avg,shift,relu_pre,relu_post",
    [(0, 5, 1, 0), (1, 3, 0, 1), (0, -2, 0, 0), (1, 0, 1, 1), (0, 12, 0, 0), (0, -7, 0, 0)],
)
def test_post_processor_matches_model(
    pool_avg, shift, relu_pre, relu_post, post_lanes, snapshots, channel_shifts
):
    """Random windows with random extra gaps between captures; pool over 4 windows. The
    accumulators run on (snapshots) or hold each window's sum (cleared at capture). With
    channel_shifts, each bias entry's lane shifts by ``shift`` plus its own offset (0-15;
    up to A, where every sum rounds to 0)."""
    rng = random.Random(shift * 7 + pool_avg + 100 * post_lanes + 1000 * channel_shifts)
    lanes, D, A = rng.choice([4, 8]), 8, 20
    items = lanes // post_lanes
    dut = PostProcessor(
        lanes, D, A, 5, post_lanes, snapshots=snapshots, channel_shifts=channel_shifts
    )
    bias = [rng.randint(-3000, 3000) for _ in range(64)]  # in rows of post_lanes
    extra = [rng.randint(0, min(15, A - shift)) if channel_shifts else 0 for _ in bias]
    desc = {
        "shift": shift,
        "qmin": -128,
        "qmax": 127,
        "relu_pre": relu_pre,
        "relu_post": relu_post,
        "pool_avg": pool_avg,
        "avg_shift": 2 if pool_avg else 0,
    }
    windows, acc = [], [0] * lanes
    for w in range(16):
        sums = [rng.randint(-(2**14), 2**14) for _ in range(lanes)]
        acc = [
            (a * snapshots + s + 2 ** (A - 1)) % 2**A - 2 ** (A - 1)
            for a, s in zip(acc, sums, strict=1)
        ]
        windows.append({
            "sums": sums, "acc": list(acc), "padwin": int(rng.random() < 0.4 and w % 4 != 1),
            "pool_first": int(w % 4 == 0), "pool_last": int(w % 4 == 3),
            "out_addr": 100 + 13 * (w // 4), "b_addr": items * (w // 8), "nvalid": lanes - 1,
        })  # fmt: skip
    # model: lane l of a window writes out_addr + l, with bias element b_addr·post_lanes + l
    want, pacc = {}, [0] * lanes
    for wd in windows:
        for lane in range(lanes):
            e = wd["b_addr"] * post_lanes + lane
            r = int(requantize(np.array([wd["sums"][lane] + bias[e]]), shift + extra[e], 8)[0])
            r = max(r, 0) if relu_pre else r
            if wd["padwin"]:
                if wd["pool_first"]:
                    pacc[lane] = 0 if pool_avg else -128
            elif wd["pool_first"]:
                pacc[lane] = r
            else:
                pacc[lane] = pacc[lane] + r if pool_avg else max(pacc[lane], r)
            if wd["pool_last"] and lane < wd["nvalid"]:
                o = int(avg_round(np.array([pacc[lane]]), 4)[0]) if pool_avg else pacc[lane]
                want[wd["out_addr"] + lane] = max(o, 0) if relu_post else o

    async def bench(ctx):
        for k, v in desc.items():
            ctx.set(getattr(dut.desc, k), v)
        for wd in windows:
            for lane in range(lanes):
                ctx.set(dut.acc[lane], wd["acc"][lane])
            for k in ("padwin", "pool_first", "pool_last", "out_addr", "b_addr", "nvalid"):
                ctx.set(getattr(dut.meta, k), wd[k])
            ctx.set(dut.capture, 1)
            await ctx.tick()
            ctx.set(dut.capture, 0)
            gap = items - 1 + rng.choice([0, 0, 1, 3])
            if gap:
                await ctx.tick().repeat(gap)

    got = {}

    async def memories(ctx):  # bias banks (sync read) and the written feature map
        sigs = [dut.wr_addr, *dut.wr_en, *dut.wr_data, *dut.bias_addr]
        async for _clk, _rst, addr, *rest in ctx.tick().sample(*sigs):
            for i in range(post_lanes):
                e = rest[2 * post_lanes + i] * post_lanes + i
                ctx.set(dut.bias_data[i], bias[e])
                if channel_shifts:
                    ctx.set(dut.shift_data[i], extra[e])
                if rest[i]:
                    got[addr + i] = rest[post_lanes + i]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(memories)
    sim.run_until(1e-8 * 16 * (lanes + 4) + 1e-6)
    assert got == want


@pytest.mark.parametrize("post_lanes", [1, 2, 4])
@pytest.mark.parametrize(
    "a_shift,b_shift,relu", [(0, 0, 0), (2, -3, 1), (-8, 8, 0), (5, 0, 1), (-1, 1, 0), (8, -8, 1)]
)
def test_post_processor_adds_like_golden(a_shift, b_shift, relu, post_lanes):
    """The residual add stages: each window's values (no pool, shift 0, so the accumulators'
    sums themselves, saturated) aligned by a_shift, the other operand read at out_addr +
    skip_off (a model of the wide read port: its words three cycles after the address)
    aligned by b_shift, summed, saturated, ReLU'd: as golden.align and the add compute them.
    Every other window does not add: its values pass unchanged."""
    rng = random.Random(a_shift * 31 + b_shift + 7 * relu + 100 * post_lanes)
    lanes, D, A = 4, 8, 20
    fields = compiler.desc_fields(EngineConfig(branches=True))
    dut = PostProcessor(lanes, D, A, 5, post_lanes, snapshots=False, fields=fields)
    skip_off = -37
    memory = {a: rng.randint(-128, 127) for a in range(40, 200)}
    windows = [
        {"sums": [rng.randint(-200, 200) for _ in range(lanes)], "out_addr": 100 + 5 * w}
        for w in range(12)
    ]
    want = {}
    for w, wd in enumerate(windows):
        add = w % 2 == 0  # (the descriptor changes between windows: the pipeline drains)
        for lane in range(lanes):
            v = int(np.clip(wd["sums"][lane], -128, 127))
            addr = wd["out_addr"] + lane
            if add:
                a = requantize(np.array([v]), a_shift, D)[0]
                b = requantize(np.array([memory[addr + skip_off]]), b_shift, D)[0]
                v = int(np.clip(a + b, -128, 127))
                v = max(v, 0) if relu else v
            want[(w, addr)] = v

    got = {}
    current = [0]

    async def bench(ctx):
        base = {"shift": 0, "qmin": -128, "qmax": 127, "relu_pre": 0, "relu_post": 0}
        for k, v in (base | {"pool_avg": 0, "avg_shift": 0, "skip_off": skip_off}).items():
            ctx.set(getattr(dut.desc, k), v)
        for w, wd in enumerate(windows):
            add = w % 2 == 0
            current[0] = w
            ctx.set(dut.desc.add, int(add))
            ctx.set(dut.desc.a_shift, a_shift if add else 0)
            ctx.set(dut.desc.b_shift, b_shift if add else 0)
            ctx.set(dut.desc.add_relu, relu if add else 0)
            await ctx.tick().repeat(3)  # (the per-op constants are registered)
            for lane in range(lanes):
                ctx.set(dut.acc[lane], wd["sums"][lane])
            meta = {"padwin": 0, "pool_first": 1, "pool_last": 1, "b_addr": 0, "nvalid": lanes}
            for k, v in (meta | {"out_addr": wd["out_addr"]}).items():
                ctx.set(getattr(dut.meta, k), v)
            ctx.set(dut.capture, 1)
            await ctx.tick()
            ctx.set(dut.capture, 0)
            await ctx.tick().repeat(dut.latency + lanes)  # drained

    async def memories(ctx):  # the biases (zero), the wide read port and the writes
        issued = [0, 0, 0]
        sigs = [dut.wr_addr, dut.skip_addr, *dut.wr_en, *dut.wr_data]
        async for _clk, _rst, addr, skip, *rest in ctx.tick().sample(*sigs):
            issued.append(skip)
            a = issued[-FeatureBuffer.WIDE_LATENCY]
            for i in range(post_lanes):
                ctx.set(dut.bias_data[i], 0)
                ctx.set(dut.skip_data[i], memory.get(a + i, 0))
                if rest[i]:
                    got[(current[0], addr + i)] = rest[post_lanes + i]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(memories)
    sim.run_until(1e-8 * len(windows) * (dut.latency + lanes + 8) + 1e-6)
    assert got == want


# ---- whole engine ---------------------------------------------------------------------------


def test_digits_cnn_bit_exact(digits_q8, digits):
    prog = check_engine(digits_q8, digits.x_test, lanes=8, n=3)
    assert prog.utilization() > 0.9


# (engine options on digits-cnn, 8 lanes: the configuration without them, the options, the
# cycles they add per op, the first test image)
ENGINE_OPTIONS = [
    # an extra register between the memories and the multipliers (the ECP5 boards)
    pytest.param({}, {"operand_regs": 1}, 1, 0, id="operand_regs"),
    # the weight address and the activation broadcast from 3 register copies (3, 3 and 2
    # lanes each), after an operand register
    pytest.param({"operand_regs": 1}, {"broadcast_copies": 3}, 1, 3, id="broadcast_copies"),
    # accumulators cleared at each capture instead of snapshots (the ECP5 boards), with and
    # without register copies of the clear: no cycle more
    pytest.param({"operand_regs": 1}, {"acc_clear": True}, 0, 5, id="acc_clear"),
    pytest.param(
        {"operand_regs": 1, "broadcast_copies": 3}, {"acc_clear": True}, 0, 5, id="acc_clear-3"
    ),
    # fmap writes registered before and after their bank rotation (4 banks: the post-
    # processor writes 4 lanes per cycle): two more drain cycles
    pytest.param({"post_lanes": 4}, {"fmap_write_reg": True}, 2, 7, id="fmap_write_reg"),
    # the weight memories' output register in place of the first weight operand register:
    # no cycle more, with and without register copies
    pytest.param({"operand_regs": 1}, {"weight_out_reg": True}, 0, 11, id="weight_out_reg"),
    pytest.param(
        {"operand_regs": 1, "broadcast_copies": 3},
        {"weight_out_reg": True},
        0,
        13,
        id="weight_out_reg-3",
    ),
    # every option the ECP5 boards use, together: 2 + 1 + 2 cycles more
    pytest.param(
        {"post_lanes": 4},
        {
            "operand_regs": 2,
            "broadcast_copies": 2,
            "acc_clear": True,
            "fmap_write_reg": True,
            "weight_out_reg": True,
            "program_read_reg": True,  # (its fetches hide behind the input and long ops)
        },
        5,
        9,
        id="every_ecp5_option",
    ),
]


@pytest.mark.parametrize("base_kw,options,more,first", ENGINE_OPTIONS)
def test_digits_cnn_bit_exact_with_options(digits_q8, digits, base_kw, options, more, first):
    """Same results with each option, and exactly ``more`` cycles more per op, as estimated."""
    cfg = EngineConfig(lanes=8, **base_kw)
    base = compiler.compile_model(digits_q8, cfg)
    cfg = dataclasses.replace(cfg, **options)
    prog = check_engine(digits_q8, digits.x_test[first:], lanes=8, n=2, config=cfg)
    assert [b + more for b in base.estimate] == prog.estimate


@pytest.mark.parametrize("in_size", [43, 44, 45])  # NF = 43 descriptor words
@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("read_reg", [False, True])
def test_descriptor_fetch_cycles_exact(in_size, prefetch, read_reg):
    """Short ops, so the descriptor fetch shows in the cycles: an input of NF (+ 1 with
    ``program_read_reg``) words or fewer waits for op 0's fetch, a longer one hides it; the
    compiler's estimate matches the simulated cycles op by op either way."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_size, 5), nn.ReLU(), nn.Linear(5, 3))
    qm, x = quantized(model, (in_size,), in_size)
    cfg = EngineConfig(lanes=2, prefetch=prefetch, program_read_reg=read_reg)
    prog = check_engine(qm, x, 2, n=2, gaps=random.Random(in_size), config=cfg)
    base = compiler.compile_model(qm, dataclasses.replace(cfg, program_read_reg=False))
    # op 0: a fetch one cycle longer (43), no longer hidden by the input (44: 1 → 46), hidden
    # (45); op 1 (its fetch overlaps the long op 0 with prefetch): the fetch, a cycle longer
    more = [{43: 1, 44: 45, 45: 0}[in_size] if read_reg else 0]
    more += [int(read_reg and not prefetch)] * (len(prog.ops) - 1)
    assert [b + k for b, k in zip(base.estimate, more, strict=True)] == prog.estimate


def test_a_hanging_engine_is_an_error_not_a_hang():
    """The bench waits for 5 outputs from an engine whose program makes 3."""
    progs = []
    for n_out in (5, 3):
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, n_out))
        qm, x = quantized(model, (6,), 1)
        progs.append(compiler.compile_model(qm, EngineConfig(lanes=2)))
    xi = golden.quantize_input(qm, x[:1])
    with pytest.raises(FxpgaError, match=r"returned 0 of 1 outputs in [\d,]+ cycles .*: it hangs"):
        amsim.run_engine(progs[0], xi, engine=Engine(progs[1].config, progs[1]))


def test_broadcast_copies_are_checked():
    with pytest.raises(FxpgaError, match=r"broadcast_copies=9 is more than the 8 lanes"):
        EngineConfig(lanes=8, broadcast_copies=9)
    with pytest.raises(FxpgaError, match=r"broadcast_copies > 1 needs block-RAM weights"):
        EngineConfig(lanes=8, broadcast_copies=2, weight_store="spram")
    with pytest.raises(FxpgaError, match=r"broadcast_copies must be in 1\.\.256, not 0"):
        EngineConfig(lanes=8, broadcast_copies=0)
    with pytest.raises(FxpgaError, match=r"acc_clear must be True or False, not 1"):
        EngineConfig(lanes=8, acc_clear=1)
    with pytest.raises(FxpgaError, match=r"program_read_reg must be True or False, not 1"):
        EngineConfig(lanes=8, program_read_reg=1)
    with pytest.raises(FxpgaError, match=r"fmap_write_reg must be True or False, not 'y'"):
        EngineConfig(lanes=8, fmap_write_reg="y")
    with pytest.raises(FxpgaError, match=r"weight_out_reg needs block-RAM weights and operand_"):
        EngineConfig(lanes=8, weight_out_reg=True)
    with pytest.raises(FxpgaError, match=r"weight_out_reg needs block-RAM weights and operand_"):
        EngineConfig(lanes=8, weight_out_reg=True, operand_regs=1, weight_store="spram")


def test_digits_cnn_bit_exact_without_prefetch(digits_q8, digits):
    cfg = EngineConfig(lanes=8, prefetch=False)
    check_engine(digits_q8, digits.x_test[7:], lanes=8, n=1, config=cfg)


def test_left_shift_limit_is_refused():
    from fxpga.quant import quantizer as Q

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    qm, _ = quantized(model, (4,), 0)
    cfg = Q.Config.from_json({"layers": {"1": {"output": {"bits": 8, "fl": 40}}}}, "cfg")
    g = qm.graph
    qm2 = Q.quantize_model(g, np.random.default_rng(0).standard_normal((8, 4)), config=cfg)
    with pytest.raises(FxpgaError, match=r"layer '1' scales up by 2\^\d+ when requantizing"):
        compiler.compile_model(qm2, EngineConfig(lanes=2))


def test_digits_cnn_bit_exact_wide_post_processor(digits_q8, digits):
    cfg = EngineConfig(lanes=16, post_lanes=2)
    check_engine(digits_q8, digits.x_test[5:], lanes=16, n=1, config=cfg)


@pytest.mark.parametrize("lanes,post_lanes", [(1, 1), (3, 1), (8, 1), (8, 4), (16, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_random_networks_bit_exact(lanes, post_lanes, seed):
    rng = random.Random(1000 * lanes + seed)
    model, shape = random_net(rng, groups=True)
    bits = rng.choice([4, 6, 8])
    qm, x = quantized(model, shape, seed, bits=bits, wbits=rng.choice([3, bits]))
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, depthwise=True)
    check_engine(qm, x, lanes, n=2, gaps=random.Random(seed), config=cfg)


def test_saturation_matches_golden():
    """Weights and inputs chosen so accumulators overflow the output range both ways."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )
    qm, _ = quantized(model, (2, 4, 4), 7)
    x = np.random.default_rng(7).standard_normal((3, 2, 4, 4)) * 50  # input saturates too
    xi = golden.quantize_input(qm, x)
    assert (np.abs(xi) == 128).any() or (xi == 127).any()
    ints = golden.run_int(qm, xi, keep=True)
    conv = ints[qm.layers[0].name]
    assert (conv == 127).any() and (conv == -128).any()
    check_engine(qm, x, lanes=3, n=3)


def test_standalone_pool_and_relu_run_as_identity():
    model = nn.Sequential(
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.MaxPool2d(2, 1),
        nn.AvgPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3, 4),
        nn.ReLU(),
        nn.ReLU(),
    )
    qm, x = quantized(model, (2, 7, 7), 3)
    prog = compiler.compile_model(qm, EngineConfig(lanes=2))
    assert [op.name.endswith(":identity") for op in prog.ops] == [True, False, True, False, True]
    check_engine(qm, x, lanes=2, n=2)


@pytest.mark.parametrize("lanes,post_lanes,copies", [(3, 1, 1), (3, 1, 2), (8, 4, 1)])
def test_runtime_writes_replace_initial_memories(digits, lanes, post_lanes, copies):
    """An engine built with empty memories, loaded over the cfg bus, computes the same (with
    copies: through the weight banks' registered write copies; with post lanes: into as
    many bias banks)."""
    model, shape = random_net(random.Random(5))
    qm, x = quantized(model, shape, 5)
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, broadcast_copies=copies)
    prog = compiler.compile_model(qm, cfg)
    empty = Engine(
        prog.config,
        None,
        fmap_depth=prog.fmap_depth,
        wmem_depth=len(prog.wmem[0]),
        bmem_depth=len(prog.bmem),
        max_ops=len(prog.ops),
    )
    xi = golden.quantize_input(qm, x[:2])
    want = golden.run_int(qm, xi).reshape(2, -1)
    got = []

    async def bench(ctx):
        from fxpga.sim.runner import load_writes

        writes = load_writes(prog)
        for addr, val in writes:
            ctx.set(empty.cfg.addr, addr)
            ctx.set(empty.cfg.data, val & 0xFFFFFFFF)
            ctx.set(empty.cfg.en, 1)
            await ctx.tick()
        ctx.set(empty.cfg.en, 0)
        for sample in prog.to_engine(xi):
            for v in sample:
                await amsim.stream_put(ctx, empty.i, v)
            got.append([await amsim.stream_get(ctx, empty.o) for _ in range(prog.out_size)])

    sim = Simulator(empty)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(prog.from_engine(np.array(got)), want)


# ---- compiler -------------------------------------------------------------------------------


def test_compiler_refuses_what_does_not_fit(digits_q8):
    worst = max((la for la in digits_q8.layers if la.acc_bits), key=lambda la: la.acc_bits)
    assert worst.acc_bits > 16
    with pytest.raises(
        FxpgaError,
        match=rf"layer '{worst.name}' needs a {worst.acc_bits}-bit accumulator, the "
        r"engine has acc_bits=16",
    ):
        compiler.compile_model(digits_q8, EngineConfig(acc_bits=16))
    with pytest.raises(
        FxpgaError,
        match=r"feature-map buffer needs 256 entries, the engine "
        r"has 100",
    ):
        compiler.compile_model(digits_q8, EngineConfig(fmap_depth=100))
    with pytest.raises(FxpgaError, match=r"weights need 8 bits, the engine has weight_bits=6"):
        compiler.compile_model(digits_q8, EngineConfig(weight_bits=6))
    with pytest.raises(FxpgaError, match=r"weight bank \(per lane\) needs 1746 entries"):
        compiler.compile_model(digits_q8, EngineConfig(wmem_depth=1000))
    with pytest.raises(FxpgaError, match=r"EngineConfig.lanes must be in 1\.\.256, not 0"):
        EngineConfig(lanes=0)


def test_avgpool_non_power_of_two_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(3), nn.Flatten(), nn.Linear(8, 2))
    qm, _ = quantized(model, (1, 6, 6), 0)
    with pytest.raises(FxpgaError, match=r"avg-pool over 3x3 = 9 elements"):
        compiler.compile_model(qm, EngineConfig(lanes=2))


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_program_model_matches_golden(digits_q8, digits, lanes):
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=lanes))
    xi = golden.quantize_input(digits_q8, digits.x_test[:50])
    want = golden.run_int(digits_q8, xi)
    for i in range(50):
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i].reshape(-1))


def test_pads_and_clips_fuse_into_the_ops_around_them():
    """TF's asymmetric 'SAME' pad becomes the next conv's padding (top/left offsets; bottom
    and right come from reading past the edge); a clip is the requantizer's saturation where
    it commutes there (before a pool, or after a max pool) and an identity op's after an
    average pool; a pad not followed by a conv is refused."""
    model = nn.Sequential(
        nn.ZeroPad2d((0, 1, 2, 1)),  # left, right, top, bottom
        nn.Conv2d(2, 3, 3, stride=2),
        nn.ReLU6(),
        nn.MaxPool2d(2, 1),
        nn.Hardtanh(-0.25, 0.5),
        nn.Conv2d(3, 4, 2),
        nn.AvgPool2d(2, 1),
        nn.ReLU6(),
        nn.Flatten(),
        nn.Linear(8, 3),  # 2x9x8 → pad 2x12x9 → conv 3x5x4 → pool 3x4x3 → 4x3x2 → 4x2x1
    )
    qm, x = quantized(model, (2, 9, 8), 4)
    prog = compiler.compile_model(qm, EngineConfig(lanes=3))
    assert [op.fused for op in prog.ops] == [
        ["1", "0", "2", "3", "4"],  # the conv first, then the pad before it
        ["5", "6"],
        ["7", "8"],  # the ReLU6 after the average pool: an identity op (and the flatten)
        ["9"],
    ]
    first = prog.ops[0]
    assert (first.H, first.W, first.PH, first.PW) == (9, 8, 2, 0)
    fmt = qm["1"].out_fmt  # ReLU6, then Hardtanh(-0.25, 0.5) after the max pool: [0, 0.5]
    assert first.bounds == (0, min(fmt.qmax, math.floor(0.5 * 2**fmt.fl)))
    assert prog.ops[2].name == "7:identity" and prog.ops[2].bounds[0] == 0
    check_engine(qm, x, lanes=3, n=2, gaps=random.Random(4))

    bad = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 5 * 5, 2))
    qm, _ = quantized(bad, (2, 8, 8), 1)
    with pytest.raises(FxpgaError, match=r"layer '0'.*runs a pad only directly before a conv"):
        compiler.compile_model(qm, EngineConfig(lanes=2))


def any_window_net():
    """Average pools of 3x3 (stride 2, padded: counted zeros) and a global 5x3, beside a max
    pool; with its input shape."""
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1),
        nn.AvgPool2d(3, 2, 1),  # 10x7 → 5x4
        nn.ReLU(),
        nn.Conv2d(5, 4, 1),
        nn.MaxPool2d((1, 2), (1, 1)),  # → 5x3
        nn.Conv2d(4, 6, 1),
        nn.AvgPool2d((5, 3)),  # global
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    return model, (2, 10, 7)


@pytest.mark.parametrize("lanes,post_lanes", [(1, 1), (3, 1), (8, 2)])
def test_average_over_any_window_with_avg_divide(lanes, post_lanes):
    """EngineConfig.avg_divide: 3x3 (stride 2, padded: counted zeros), a power of two, and a
    global 5x3 average, each a multiply by the window's reciprocal, bit-exact and
    cycle-exact; without it a 3x3 window is refused, naming the option."""
    qm, x = quantized(*any_window_net(), 9)
    with pytest.raises(FxpgaError, match=r"3x3 = 9 elements; .*EngineConfig.avg_divide"):
        compiler.compile_model(qm, EngineConfig(lanes=lanes))
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, avg_divide=True)
    assert EngineConfig.for_model(qm, lanes).avg_divide  # what the model needs, by default
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    assert [d["avg_mul"] > 0 for d in prog.descriptors] == [True] * len(prog.ops)


def test_avg_divide_fields_are_exact_over_every_sum():
    """The engine's divide (compiler.avg_divide_fields) against avg_round, for every pool sum
    a window of k values of data_bits can reach."""
    from fxpga.quant.qformat import avg_round

    for bits in (2, 4, 8, 12):
        S = compiler.avg_divide_shift(bits)
        for k in (1, 2, 3, 9, 15, 64, 125, 255, 256):
            f = compiler.avg_divide_fields(k, bits)
            sums = np.arange(k * -(1 << (bits - 1)), k * ((1 << (bits - 1)) - 1) + 1, dtype=object)
            got = ((2 * sums + f["avg_off"]) * f["avg_mul"] >> S) - (1 << (bits - 1))
            assert np.array_equal(got, avg_round(sums, k)), (bits, k)
            assert f["avg_mul"] <= 1 << 30 and f["avg_off"] < 1 << 23  # 32- and 24-bit fields


def grouped_net():
    """Depthwise (stride 2, asymmetric pad, ReLU6), a channel multiplier of 2, a grouped
    conv, a 1x1, pools: with its input shape."""
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(6, 6, 3, stride=2, groups=6),  # depthwise: 8x7 (padded) → 3x3
        nn.ReLU6(),
        nn.Conv2d(6, 12, 3, padding=1, groups=6),  # a channel multiplier of 2
        nn.Conv2d(12, 8, 1, groups=4),  # grouped: 3 in, 2 out per group
        nn.MaxPool2d(2, 1),
        nn.Conv2d(8, 8, 2, groups=8, bias=False),  # depthwise after a pool: 2x2 → 1x1
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return model, (2, 7, 6)


ECP5_REGS = {"operand_regs": 1, "weight_out_reg": True, "broadcast_copies": 2, "acc_clear": True}


@pytest.mark.parametrize(
    "lanes,post_lanes,extra",
    [(1, 1, {}), (3, 1, {}), (4, 2, {}), (16, 2, {}), (8, 2, ECP5_REGS)],
)
def test_grouped_and_depthwise_convs_with_depthwise(lanes, post_lanes, extra):
    """EngineConfig.depthwise: each group of lanes output channels is an op reading its
    window of input channels, but a depthwise layer's whole groups are one op, its window
    moving by `lanes` channels a group (g_c); a depthwise op keeps a kernel per lane and
    masks the other lanes' weights at each tap (with the ECP5 boards' operand registers
    too); bit- and cycle-exact; MACs count real products only; without the option the
    compiler names it."""
    qm, x = quantized(*grouped_net(), 12)
    with pytest.raises(FxpgaError, match=r"layer '3': grouped convolution \(groups=6\)"):
        compiler.compile_model(qm, EngineConfig(lanes=lanes))
    assert EngineConfig.for_model(qm, lanes).depthwise
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, depthwise=True, **extra)
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    dw = [op for op in prog.ops if op.name.startswith("3[")]
    whole = 6 // lanes if 6 // lanes > 1 else 0  # groups in the first op
    assert [op.o0 for op in dw] == ([0, whole * lanes] if whole else list(range(0, 6, lanes)))[
        : len(dw)
    ]
    assert [op.g_c for op in dw] == [lanes if whole else 0] + [0] * (len(dw) - 1)
    assert len(dw) == (1 + (6 % lanes > 0) if whole else -(-6 // lanes))
    assert sum(op.macs for op in dw) == 6 * 3 * 3 * 9
    # a kernel per lane, per group (the descriptor's w_g)
    assert all(op.lane_weights == 9 for op in dw)


def separable_net():
    """Depthwise-separable blocks on 8 and 16 channels (one stride 2 after TF's asymmetric
    pad, one after a ReLU6): with its input shape."""
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(8, 8, 3, stride=2, groups=8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 3),
    )
    return model, (2, 6, 6)


@pytest.mark.parametrize(
    "lanes,post_lanes,banks,extra",
    [
        (8, 1, 8, {}),
        (4, 1, 2, {}),
        (8, 2, 4, {"fmap_read_reg": True}),
        (16, 2, 16, {}),  # 8-channel maps are not 16-aligned: those ops read a channel a tap
        (8, 2, 8, ECP5_REGS | {"fmap_read_reg": True}),
    ],
)
def test_depthwise_reads_a_pixels_channels_from_the_banks(lanes, post_lanes, banks, extra):
    """EngineConfig.fmap_banks: a depthwise op whose channels sit bank-aligned reads `banks`
    channels of a pixel per tap, one per lane (dw = 3), so a window takes KH·KW·lanes/banks
    cycles, not KH·KW·lanes; bit- and cycle-exact (with the read register and the ECP5
    boards' registers too). Channels that do not fill whole rows of banks are read one per
    tap."""
    qm, x = quantized(*separable_net(), 5)
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, depthwise=True, fmap_banks=banks)
    cfg = dataclasses.replace(cfg, **extra)
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    dw = [op for op in prog.ops if op.dw]
    for op in dw:
        wide = op.CP % banks == 0 and banks > 1
        assert op.dw == (3 if wide else 1)
        assert op.taps == 9 * (-(-op.C // banks) if wide else op.C)
    if all(op.dw == 3 for op in dw):  # fewer cycles than with a bank per post lane
        fewer = compiler.compile_model(qm, dataclasses.replace(cfg, fmap_banks=None))
        assert prog.total_cycles < fewer.total_cycles
    else:  # (EngineConfig.for_model picks banks every depthwise layer's channels divide)
        assert EngineConfig.for_model(qm, lanes, post_lanes=post_lanes).banks == 8


@pytest.mark.parametrize(
    ("lanes", "extra"), [(4, {}), (3, {"fmap_write_reg": True, "fmap_read_reg": True})]
)
def test_feature_maps_in_spram(lanes, extra):
    """EngineConfig.fmap_store="spram" (the iCEBreaker's DS-CNN): each buffer one single-
    ported SPRAM with two banks in its 16-bit word, so the depthwise ops read two channels
    per tap; bit- and cycle-exact, with the write and read registers too."""
    qm, x = quantized(*separable_net(), 5)
    cfg = EngineConfig.for_model(qm, lanes, fmap_store="spram", **extra)
    assert cfg.banks == (2 if lanes == 4 else 1) and cfg.post_lanes == 1
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    assert any(op.dw == 3 for op in prog.ops) == (lanes == 4)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_spram_feature_maps_are_checked():
    """What single-ported 16-bit SPRAM buffers cannot do, each named in one line."""
    for kw, why in (
        ({"branches": True}, "a graph that branches reads and writes one buffer"),
        ({"lanes": 16}, "one write per cycle, not post_lanes=2"),
        ({"data_bits": 12, "fmap_banks": 2, "lanes": 2}, "2 banks of 12-bit words exceed"),
        ({"weight_store": "spram"}, "need 6 of the 4 SPRAMs \\(at most 4 lanes\\)"),
        ({"fmap_store": "dram"}, "fmap_store must be 'bram' or 'spram', not 'dram'"),
    ):
        with pytest.raises(FxpgaError, match=why):
            EngineConfig(**({"lanes": 8, "fmap_store": "spram"} | kw))
    assert EngineConfig(lanes=4, fmap_store="spram", weight_store="spram").banks == 1
    # a buffer is one SPRAM: 16K words of one value (one bank) here
    with pytest.raises(FxpgaError, match="fmap_depth=16385 exceeds one SPRAM's 16384 words"):
        EngineConfig(lanes=4, fmap_store="spram", fmap_depth=16385)
    qm, _ = quantized(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1)), (1, 130, 130), 1)
    with pytest.raises(FxpgaError, match="feature-map buffer needs 16900 entries, the engine has"):
        compiler.compile_model(qm, EngineConfig(lanes=4, fmap_store="spram"))
    cfg = EngineConfig(lanes=4, fmap_store="spram")
    with pytest.raises(FxpgaError, match="Engine fmap_depth must be in 1..16384"):
        Engine(cfg, None, fmap_depth=16385, wmem_depth=16, bmem_depth=16)


def narrow_net():
    """Convs narrower than 8 lanes (2, 3 and 4 output channels) after one of 8: with its input
    shape."""
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 4, 1),
        nn.Conv2d(4, 3, 3),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )
    return model, (2, 6, 6)


@pytest.mark.parametrize(
    ("net", "lanes", "banks", "extra"),
    [
        ("narrow", 8, 4, {}),
        ("narrow", 8, 2, {}),
        ("narrow", 4, 4, ECP5_REGS | {"broadcast_copies": 1, "fmap_read_reg": True}),
        ("residual", 8, 2, {}),
        ("residual", 8, 4, ECP5_REGS | {"fmap_read_reg": True, "fmap_write_reg": True}),
    ],
)
def test_channel_split(net, lanes, banks, extra):
    """EngineConfig.channel_split: a conv whose channels sit bank-aligned and that is faster
    so (narrower than the lanes) reads `banks` channels a tap, lane o·banks + j summing
    output channel o's channels ≡ j (mod banks), the adder tree adding them up before the
    accumulators; bit- and cycle-exact (with residual adds and the ECP5 boards' registers
    too), in fewer cycles than without."""
    qm, x = (
        quantized(*narrow_net(), 3) if net == "narrow" else quantized(ResidualNet(), (2, 8, 6), 3)
    )
    cfg = EngineConfig.for_model(qm, lanes, fmap_banks=banks, channel_split=True, **extra)
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes + banks), config=cfg)
    split = [op for op in prog.ops if op.dw == 2]
    assert split and all(op.C % banks == 0 for op in split)
    plain = compiler.compile_model(qm, dataclasses.replace(cfg, channel_split=False))
    assert prog.total_cycles < plain.total_cycles
    for op in split:  # each faster than it would be unsplit
        assert compiler.run_cycles(op, cfg) < compiler.run_cycles(
            dataclasses.replace(op, dw=0, banks=1), cfg
        )
    with pytest.raises(FxpgaError, match="channel_split reads `banks` channels a tap"):
        EngineConfig(lanes=8, channel_split=True)


def test_weights_without_a_write_port():
    """EngineConfig.weight_writes=False (the ULX3S): the weights are the bitstream's, with no
    write port (on ECP5 no write-address copies to the lanes' DP16KDs); bit- and cycle-exact;
    SPRAM weights need the port."""
    from types import SimpleNamespace

    from amaranth.back import verilog

    qm, x = quantized(*narrow_net(), 3)
    regs = ECP5_REGS | {"lanes": 8}
    for writable in (True, False):
        cfg = EngineConfig.for_model(qm, weight_writes=writable, **regs)
        prog = check_engine(qm, x, 8, n=1, gaps=random.Random(5), config=cfg)
        text = verilog.convert(Engine(cfg, prog), platform=SimpleNamespace(family="ecp5"))
        assert ("wr_addr0_0" in text) == writable
    with pytest.raises(FxpgaError, match="weight_writes=False needs weights in block RAM"):
        EngineConfig(weight_store="spram", weight_writes=False)


@pytest.mark.parametrize(("lanes", "pack", "wbits"), [(8, 2, 8), (5, 2, 8), (6, 4, 4)])
def test_packed_weights(lanes, pack, wbits):
    """EngineConfig.weight_pack: ``pack`` lanes' weights in one memory word (the last group
    short where ``pack`` does not divide the lanes): bit- and cycle-exact with the ULX3S's
    registers, each group one memory (on ECP5 DP16KDs of 16-bit words, read through their
    output register). Packing needs baked weights and at most 18 bits a word."""
    from types import SimpleNamespace

    from amaranth.back import verilog

    qm, x = quantized(*narrow_net(), 3, wbits=wbits)
    regs = ECP5_REGS | {"lanes": lanes, "broadcast_copies": 1}
    cfg = EngineConfig.for_model(
        qm, weight_bits=wbits, weight_writes=False, weight_pack=pack, **regs
    )
    prog = check_engine(qm, x, lanes, n=1, gaps=random.Random(lanes), config=cfg)
    text = verilog.convert(Engine(cfg, prog), platform=SimpleNamespace(family="ecp5"))
    assert text.count("DP16KD #(") == -(-lanes // pack)  # a block a group (the rest inferred)
    for bad in ({"weight_pack": 3}, {"weight_pack": 4}, {"weight_pack": 2, "weight_writes": True}):
        with pytest.raises(FxpgaError, match="weight_pack=.* must be a power of two"):
            EngineConfig(**({"weight_writes": False} | bad))


def test_fmap_banks_are_checked():
    for bad in (3, 16, 1):
        with pytest.raises(FxpgaError, match="fmap_banks must be a power of two dividing"):
            EngineConfig(lanes=8, post_lanes=2, fmap_banks=bad)
    assert EngineConfig(lanes=24, post_lanes=2, fmap_banks=8).banks == 8
    assert EngineConfig(lanes=24, post_lanes=2).banks == 2


class ResidualNet(nn.Module):
    """A stem; a residual block with an identity skip (its add joins the second conv); one
    with a stride-2 projection, whose add joins the projection (the op computed last); then
    ``x + conv(x)``, whose operands would share a buffer (the compiler copies one); a pool,
    a linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.proj = nn.Conv2d(4, 6, 1, stride=2)
        self.single = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c2(torch.relu(self.c1(x))) + x)
        x = torch.relu(self.c4(torch.relu(self.c3(x))) + self.proj(x))
        x = self.single(x) + x
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize(
    "lanes,post_lanes,extra",
    [(1, 1, {}), (3, 1, {}), (8, 4, {}), (16, 2, {}), (8, 2, ECP5_REGS)],
)
def test_residual_adds_with_branches(lanes, post_lanes, extra):
    """EngineConfig.branches: the adds run in the post-processing of the op producing one
    operand, reading the other from the buffer it writes; bit- and cycle-exact (with the ECP5
    boards' registers too). Without the option the compiler names it."""
    qm, x = quantized(ResidualNet(), (2, 8, 6), 3)
    with pytest.raises(FxpgaError, match="adds or concatenates tensors .* EngineConfig.branches"):
        compiler.compile_model(qm, EngineConfig(lanes=lanes))
    cfg = EngineConfig.for_model(qm, lanes, post_lanes=post_lanes, **extra)
    assert cfg.branches
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    ops = {op.name: op for op in prog.ops}
    assert (ops["c2"].skip, ops["proj"].skip, ops["single"].skip) == ("relu", "c4", "relu_4:copy")
    assert ops["c2"].add_relu and ops["proj"].add_relu and not ops["single"].add_relu
    # written in place over the other operand where nothing reads it later
    assert ops["c2"].skip_addr == ops["c2"].out_addr and ops["proj"].out_buf == ops["c4"].out_buf
    for op in prog.ops:
        assert not op.add or op.in_buf != op.out_buf


class ConcatNet(nn.Module):
    """Concats: of two convs reading one tensor (each writes its channels of the concat's
    map, one of them a depthwise conv split into ops); of a tensor other layers read too and
    a conv of it (that tensor is copied in); then x + conv(x) of the concat (a copy too)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.c = nn.Conv2d(7, 5, 3, padding=1)
        self.d = nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(12 * 3 * 3, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([self.a(x), torch.relu(self.b(x))], dim=1)
        z = torch.cat([y, self.c(y)], dim=1)
        z = self.d(z) + z
        return self.fc(torch.flatten(nn.functional.max_pool2d(z, 2), 1))


@pytest.mark.parametrize("lanes,post_lanes", [(1, 1), (3, 1), (8, 4)])
def test_concats_with_branches(lanes, post_lanes):
    """Concat costs nothing where an input's op is read by the concat alone: it writes its
    channels of the concat's map, aligned to the concat's format; other inputs are copied
    there by identity ops; bit- and cycle-exact."""
    qm, x = quantized(ConcatNet(), (2, 6, 6), 4)
    cfg = EngineConfig.for_model(qm, lanes, post_lanes=post_lanes)
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    ops = {op.name: op for op in prog.ops}
    assert ops["a"].dst == "cat" and ops["a"].o0 == 0 and ops["a"].OP == 7
    b_o0 = [3] if lanes == 1 else list(range(3, 7, lanes))  # (1 lane: one op, 4 groups)
    assert [op.o0 for op in prog.ops if op.name.startswith("b[")] == b_o0
    assert ops["cat:into:cat_1"].o0 == 0 and ops["c"].o0 == 7 and ops["c"].OP == 12
    # identity ops: the copy into the concat, the add's (x + d(x)) and the pool's
    identity = [op.name for op in prog.ops if op.macs == 0]
    assert identity == ["cat:into:cat_1", "cat_1:copy", "max_pool2d:identity"]
    writers = [op.completes_layer for op in prog.ops if op.dst == "cat"]
    assert writers[-1] and not any(writers[:-1])


class RandomDAG(nn.Module):
    """A random residual network: a stem conv, then blocks of kinds ``res`` (two convs and
    an identity skip), ``proj`` (two convs, the first maybe strided, and a 1x1 projection),
    ``single`` (x + conv(x)), ``fork`` (conv(x) + conv(x)), ``cat`` (x and conv(x), or
    two convs of x, concatenated) or ``conv``, each maybe followed by a ReLU and a pool; the
    two operands in either order; a linear."""

    def __init__(self, rng: random.Random):
        super().__init__()
        c, h, w = rng.randint(1, 3), rng.randint(4, 7), rng.randint(4, 7)
        self.shape = (c, h, w)
        co = rng.randint(1, 5)
        self.stem = nn.Conv2d(c, co, 3, padding=1)
        c = co
        self.blocks, self.plan = nn.ModuleList(), []
        for _ in range(rng.randint(2, 3)):
            kind = rng.choice(["res", "proj", "single", "fork", "cat", "conv"])
            co = c if kind in ("res", "single") else rng.randint(1, 6)
            s = rng.choice([1, 2]) if kind == "proj" and min(h, w) >= 3 else 1
            mods = [nn.Conv2d(c, co, 3, stride=s, padding=1)]
            if kind in ("res", "proj"):
                mods.append(nn.Conv2d(co, co, 3, padding=1))
            if kind in ("proj", "fork") or (kind == "cat" and rng.random() < 0.5):
                mods.append(nn.Conv2d(c, co, 1, stride=s))
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
            pool = rng.choice([None, "max_pool2d", "avg_pool2d"]) if min(h, w) >= 2 else None
            if pool is not None:
                h, w = h // 2, w // 2
            self.blocks.append(nn.ModuleList(mods))
            self.plan.append((kind, rng.random() < 0.5, rng.random() < 0.7, pool))
            c = co + (co if len(mods) == 2 else c) if kind == "cat" else co
        self.fc = nn.Linear(c * h * w, rng.randint(1, 5))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for mods, (kind, swap, relu, pool) in zip(self.blocks, self.plan, strict=True):
            if kind in ("conv", "cat"):
                a, b = mods[0](x), None
            elif kind == "single":
                a, b = mods[0](x), x
            elif kind == "fork":
                a, b = mods[0](x), mods[1](x)
            else:
                a = mods[1](torch.relu(mods[0](x)))
                b = x if kind == "res" else mods[2](x)
            if kind == "cat":
                b = mods[1](x) if len(mods) == 2 else x
                x = torch.cat([b, a] if swap else [a, b], dim=1)
            elif b is not None:
                x = b + a if swap else a + b
            else:
                x = a
            if relu:
                x = torch.relu(x)
            if pool is not None:
                x = getattr(nn.functional, pool)(x, 2)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("lanes,post_lanes", [(1, 1), (3, 1), (8, 4)])
@pytest.mark.parametrize("seed", range(3))
def test_random_residual_networks_bit_exact(lanes, post_lanes, seed):
    """Seeded random residual DAGs with random valid/ready gaps: bit- and cycle-exact."""
    rng = random.Random(7000 + 10 * lanes + seed)
    model = RandomDAG(rng)
    bits = rng.choice([4, 6, 8])
    qm, x = quantized(model, model.shape, seed, bits=bits)
    cfg = EngineConfig.for_model(qm, lanes, post_lanes=post_lanes, data_bits=bits)
    check_engine(qm, x, lanes, n=2, gaps=random.Random(seed), config=cfg)


class InputResidual(nn.Module):
    """A residual block on the graph input: its other operand is the input itself."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(torch.relu(self.c1(x))) + x, 1))


class SplitResidual(nn.Module):
    """x + depthwise(x) over more channels than lanes: one add split into ops, which share
    the copy of x."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.fc(torch.flatten(self.dw(x) + x, 1))


class AddsLast(nn.Module):
    """The model's output is an add (the output is read right after an op that adds)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.a, self.b = nn.Linear(4 * 4 * 4, 5), nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        z = torch.flatten(torch.relu(self.c(x)), 1)
        return self.a(z) + self.b(z)


class SelfOps(nn.Module):
    """z + z and cat([.., y, y]) with y read by the concat alone: one tensor as both
    operands."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(9 * 4 * 4, 3)

    def forward(self, x):
        y, z = self.c(x), self.d(x)
        return self.fc(torch.flatten(torch.cat([torch.relu(z + z), y, y], 1), 1))


@pytest.mark.parametrize("model", [InputResidual, SplitResidual, AddsLast, SelfOps])
@pytest.mark.parametrize("lanes,extra", [(1, {}), (4, {"fmap_read_reg": True})])
def test_branching_corner_cases_bit_exact(model, lanes, extra):
    """Graphs that once went wrong: the input as an add's other operand (it must stay in
    buffer 0), a split add sharing one copy, an output read right after an add, one tensor
    as both operands of an add and of a concat."""
    qm, x = quantized(model(), (1, 4, 4) if model is SplitResidual else (2, 4, 4), 6)
    cfg = EngineConfig.for_model(qm, lanes, **extra)
    prog = check_engine(qm, x, lanes, n=2, gaps=random.Random(lanes), config=cfg)
    assert prog.ops[0].in_buf == 0
    copies = [op.name for op in prog.ops if op.name.endswith(":copy")]
    assert len(copies) == len(set(copies))


def test_adding_a_flattened_map_to_a_vector_is_refused():
    """A flattened map is stored channel-last, a linear layer's output in feature order: an
    add of the two is refused in one line (a reorder is not implemented)."""

    class FlatAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(2, 2, 1), nn.Linear(8, 8)

        def forward(self, x):
            return torch.flatten(self.c(x), 1) + self.fc(torch.flatten(x, 1))

    qm, _ = quantized(FlatAdd(), (2, 2, 2), 1)
    with pytest.raises(FxpgaError, match="layer 'add': the engine adds tensors stored alike"):
        compiler.compile_model(qm, EngineConfig.for_model(qm, 4))


@pytest.mark.parametrize(
    "lanes,post_lanes,extra",
    [(3, 1, {}), (8, 4, {"depthwise": True}), (8, 2, {"acc_clear": True, "operand_regs": 1})],
)
@pytest.mark.parametrize("seed", range(2))
def test_per_channel_shifts_bit_exact(lanes, post_lanes, extra, seed):
    """Random chains (grouped and depthwise convs among them with ``depthwise``) and residual
    DAGs whose output channels' weight ranges differ up to 64x, a weight format per channel:
    each lane requantizes by its own shift, bit- and cycle-exact."""
    rng = random.Random(9000 + 10 * lanes + seed)
    for model, shape in (
        random_net(rng, groups="depthwise" in extra),
        (m := RandomDAG(rng), m.shape),
    ):
        qm, x = quantized(model, shape, seed, per_channel=True)
        assert any(la.per_channel for la in qm.layers)
        cfg = EngineConfig.for_model(qm, lanes, post_lanes=post_lanes, **extra)
        assert cfg.channel_shifts
        check_engine(qm, x, lanes, n=2, gaps=random.Random(seed), config=cfg)
        with pytest.raises(FxpgaError, match="format per output channel.*channel_shifts=False"):
            compiler.compile_model(qm, dataclasses.replace(cfg, channel_shifts=False))


@pytest.mark.parametrize(
    "lanes,post_lanes,extra",
    [
        (1, 1, {}),
        (3, 1, {"depthwise": True, "avg_divide": True}),
        (8, 4, {"operand_regs": 1, "acc_clear": True, "depthwise": True}),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_unsigned_activations_bit_exact(lanes, post_lanes, extra, seed):
    """Random chains (pools, clips, grouped and depthwise convs with ``depthwise``; any
    average window with ``avg_divide``) and residual DAGs (adds and concats of unsigned and
    signed tensors, unsigned sums) at 4, 6 and 8 bits, with unsigned formats wherever a
    tensor cannot be negative, the input among them: bit- and cycle-exact. The first seed
    also with a weight format per channel."""
    rng = random.Random(9500 + 10 * lanes + seed)
    nets = [random_net(rng, groups="depthwise" in extra), (m := RandomDAG(rng), m.shape)]
    if "avg_divide" in extra:
        nets.append(any_window_net())
    for model, shape in nets:
        bits = rng.choice([4, 6, 8])
        qm, x = quantized(model, shape, seed, bits=bits, per_channel=seed == 0, unsigned=True)
        assert not qm.input_fmt.signed
        cfg = EngineConfig.for_model(qm, lanes, post_lanes=post_lanes, data_bits=bits, **extra)
        assert cfg.unsigned
        check_engine(qm, x, lanes, n=2, gaps=random.Random(seed), config=cfg)
    with pytest.raises(FxpgaError, match="has unsigned tensors.*EngineConfig.unsigned=False"):
        compiler.compile_model(qm, dataclasses.replace(cfg, unsigned=False))
