"""Serial post-processing: bias, rounding shift, saturation, ReLU, fused max/avg pooling."""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .desc import FIELD_BITS, Descriptor

MAX_LEFT_SHIFT = 31


class PostProcessor(wiring.Component):
    """Turns the MAC array's accumulators into output feature-map writes, one lane per cycle.

    On ``capture`` (the window's last tap has reached the accumulators) all ``lanes``
    accumulators are latched together with the window's metadata; then lane ``l`` is processed
    in cycle ``capture + 1 + l`` through a 5-stage pipeline:

    1. window sum = ``acc − snapshot`` (modulo ``2^acc_bits``; the snapshot becomes ``acc``);
       the bias read is issued;
    2. ``+ bias``;
    3. requantize: ``s > 0``: ``(v + 2^(s−1)) >> s``, ``s ≤ 0``: ``v << −s``; saturate to
       ``[qmin, qmax]``; ReLU if ``relu_pre``;
    4. pool: the first window of a pool output loads the per-lane pool register, the others
       take the max or add; a window in pool padding contributes nothing. On the pool's last
       window: avg → ``(sum + 2^(k−1)) >> k``, then ReLU if ``relu_post``;
    5. write ``out_addr + l·POHW`` if ``l < nvalid`` and it was the pool's last window.

    **Latency**: lane ``l``'s write happens in cycle ``capture + 5 + l`` (``LATENCY`` = 5).
    **Throughput**: one window per ``lanes`` cycles; ``capture`` must not come more often
    (the ``TapGenerator`` guarantees it). Exactly matches ``golden.step`` for conv/linear
    followed by the fused element-wise layers.
    """

    LATENCY = 5

    def __init__(self, lanes: int, data_bits: int, acc_bits: int, bias_depth_bits: int):
        self.lanes, self.data_bits, self.acc_bits = lanes, data_bits, acc_bits
        meta = data.StructLayout(
            {
                "padwin": 1,
                "pool_first": 1,
                "pool_last": 1,
                "out_addr": unsigned(FIELD_BITS),
                "b_addr": unsigned(FIELD_BITS),
                "nvalid": unsigned(FIELD_BITS),
            }
        )
        self.meta_layout = meta
        super().__init__(
            {
                "desc": In(Descriptor),
                "capture": In(1),
                "meta": In(meta),
                "acc": In(signed(acc_bits)).array(lanes),
                "bias_addr": Out(bias_depth_bits),
                "bias_data": In(signed(acc_bits)),
                "wr_addr": Out(FIELD_BITS),
                "wr_data": Out(signed(data_bits)),
                "wr_en": Out(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        d = self.desc
        lanes, A, D = self.lanes, self.acc_bits, self.data_bits
        P = D + 8  # pool register: sums of up to 256 elements
        L = max(1, (lanes - 1).bit_length())

        cap = [Signal(signed(A), name=f"cap{i}") for i in range(lanes)]
        snap = [Signal(signed(A), name=f"snap{i}") for i in range(lanes)]
        pacc = [Signal(signed(P), name=f"pacc{i}") for i in range(lanes)]
        meta = Signal(self.meta_layout)
        active = Signal()
        cnt = Signal(L + 1)

        # stage 1 (item l = cnt)
        s1_v, s1_diff, s1_l = Signal(), Signal(signed(A)), Signal(L + 1)
        s1_meta = Signal(self.meta_layout)
        s1_addr = Signal(FIELD_BITS)
        lane_addr = Signal(FIELD_BITS)
        m.d.comb += self.bias_addr.eq(meta.b_addr + cnt)
        with m.If(self.capture):
            m.d.sync += [cap[i].eq(self.acc[i]) for i in range(lanes)]
            m.d.sync += [meta.eq(self.meta), active.eq(1), cnt.eq(0)]
        m.d.sync += s1_v.eq(active)
        with m.If(active):
            m.d.sync += [s1_diff.eq(cap[0] - snap[0]), s1_l.eq(cnt), s1_meta.eq(meta)]
            with m.If(~self.capture):
                m.d.sync += [cap[i].eq(cap[i + 1]) for i in range(lanes - 1)]
            m.d.sync += [snap[i].eq(snap[i + 1]) for i in range(lanes - 1)]
            m.d.sync += snap[lanes - 1].eq(cap[0])
            addr = Mux(cnt == 0, meta.out_addr, lane_addr + d.POHW)
            m.d.sync += [lane_addr.eq(addr), s1_addr.eq(addr)]
            with m.If(cnt == lanes - 1), m.If(~self.capture):
                m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)
            with m.If(self.capture):
                m.d.sync += cnt.eq(0)

        # stage 2: + bias
        s2_v, s2_val = Signal(), Signal(signed(A))
        s2_meta, s2_l, s2_addr = Signal(self.meta_layout), Signal(L + 1), Signal(FIELD_BITS)
        m.d.sync += [
            s2_v.eq(s1_v),
            s2_val.eq(s1_diff + self.bias_data),
            s2_meta.eq(s1_meta),
            s2_l.eq(s1_l),
            s2_addr.eq(s1_addr),
        ]

        # stage 3: requantize, saturate, relu_pre
        s3_v, s3_val = Signal(), Signal(signed(D))
        s3_meta, s3_l, s3_addr = Signal(self.meta_layout), Signal(L + 1), Signal(FIELD_BITS)
        sh = d.shift
        rsh = Signal(unsigned(6))
        lsh = Signal(unsigned(5))
        m.d.comb += [rsh.eq(Mux(sh > 0, sh, 0)), lsh.eq(Mux(sh < 0, -sh, 0))]
        rounding = Mux(sh > 0, Const(1, unsigned(A + 1)) << (rsh - 1)[:6], 0)
        right = (s2_val + rounding) >> rsh
        wide = Signal(signed(A + MAX_LEFT_SHIFT + 1))
        m.d.comb += wide.eq(Mux(sh > 0, right, s2_val << lsh))
        sat = Mux(wide > d.qmax, d.qmax, Mux(wide < d.qmin, d.qmin, wide))
        m.d.sync += [
            s3_v.eq(s2_v),
            s3_meta.eq(s2_meta),
            s3_l.eq(s2_l),
            s3_addr.eq(s2_addr),
            s3_val.eq(Mux(d.relu_pre & (sat < 0), 0, sat)),
        ]

        # stage 4: pool (pacc rotates one lane per item)
        s4_en, s4_val, s4_addr = Signal(), Signal(signed(D)), Signal(FIELD_BITS)
        head = pacc[0]
        x = s3_val
        first, padw = s3_meta.pool_first, s3_meta.padwin
        empty = Mux(d.pool_avg, 0, d.qmin)
        combined = Mux(d.pool_avg, head + x, Mux(x > head, x, head))
        new = Signal(signed(P))
        m.d.comb += new.eq(Mux(padw, Mux(first, empty, head), Mux(first, x, combined)))
        k = d.avg_shift[:4].as_unsigned()
        avg = (new + Mux(k > 0, Const(1, unsigned(P)) << (k - 1)[:4], 0)) >> k
        pooled = Signal(signed(P))
        m.d.comb += pooled.eq(Mux(d.pool_avg, avg, new))
        with m.If(s3_v):
            m.d.sync += [pacc[i].eq(pacc[i + 1]) for i in range(lanes - 1)]
            m.d.sync += pacc[lanes - 1].eq(new)
        m.d.sync += [
            s4_en.eq(s3_v & s3_meta.pool_last & (s3_l < s3_meta.nvalid)),
            s4_val.eq(Mux(d.relu_post & (pooled < 0), 0, pooled)),
            s4_addr.eq(s3_addr),
        ]

        # stage 5: write
        m.d.comb += [self.wr_en.eq(s4_en), self.wr_addr.eq(s4_addr), self.wr_data.eq(s4_val)]
        m.d.comb += self.busy.eq(active | s1_v | s2_v | s3_v | s4_en)
        return m
