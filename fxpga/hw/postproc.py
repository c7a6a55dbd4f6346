"""Serial post-processing: bias, rounding shift, saturation, ReLU, fused max/avg pooling."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .compiler import MAX_LEFT_SHIFT
from .desc import descriptor_layout


class PostProcessor(wiring.Component):
    """Turns the MAC array's accumulators into output feature-map writes, ``post_lanes`` lanes
    (one *item*) per cycle, ``items = lanes / post_lanes`` cycles per window.

    On ``capture`` (the window's last tap has reached the accumulators) all ``lanes``
    accumulators are latched together with the window's metadata; then item ``j`` (lanes
    ``j·post_lanes … j·post_lanes + post_lanes − 1``) is processed in cycle
    ``capture + 1 + j`` through a 6-stage pipeline, each lane of the item in parallel:

    1. window sum = ``acc − snapshot`` (modulo ``2^acc_bits``; the snapshot becomes ``acc``);
       the bias row read is issued;
    2. ``v = + bias`` (wrapped to ``acc_bits``), plus ``2^(s−1)`` when ``s > 0``;
    3. the shift: ``s > 0``: ``v >> s`` (arithmetic), ``s ≤ 0``: ``v << −s``;
    4. saturate to ``[qmin, qmax]``; ReLU if ``relu_pre``;
    5. pool: the first window of a pool output loads the lane's pool register, the others
       take the max or add; a window in pool padding contributes nothing. On the pool's last
       window: avg → ``(sum + 2^(k−1)) >> k``, then ReLU if ``relu_post``;
    6. write lane ``l`` (channel ``g·lanes + l``) to ``wr_addr + i`` (``wr_addr =
       out_addr + j·post_lanes``) where ``l < nvalid`` and it was the pool's last window.

    **Latency**: item ``j``'s writes happen in cycle ``capture + 6 + j`` (``LATENCY`` = 6).
    **Throughput**: one window per ``items`` cycles; ``capture`` must not come more often
    (the ``TapGenerator`` guarantees it). Exactly matches ``golden.step`` for conv/linear
    followed by the fused element-wise layers.
    """

    LATENCY = 6

    def __init__(
        self,
        lanes: int,
        data_bits: int,
        acc_bits: int,
        bias_row_bits: int,
        post_lanes: int = 1,
        field_bits: int = 24,
    ):
        assert lanes % post_lanes == 0
        self.field_bits = FB = field_bits
        self.lanes, self.data_bits, self.acc_bits = lanes, data_bits, acc_bits
        self.post_lanes, self.items = post_lanes, lanes // post_lanes
        meta = data.StructLayout({
            "padwin": 1, "pool_first": 1, "pool_last": 1,
            "out_addr": unsigned(FB), "b_addr": unsigned(FB), "nvalid": unsigned(FB),
        })  # fmt: skip
        self.meta_layout = meta
        super().__init__(
            {
                "desc": In(descriptor_layout(FB)),
                "capture": In(1),
                "meta": In(meta),
                "acc": In(signed(acc_bits)).array(lanes),
                "bias_addr": Out(bias_row_bits),
                "bias_data": In(signed(acc_bits)).array(post_lanes),
                "wr_addr": Out(FB),
                "wr_data": Out(signed(data_bits)).array(post_lanes),
                "wr_en": Out(1).array(post_lanes),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        d = self.desc
        A, D, W, n = self.acc_bits, self.data_bits, self.post_lanes, self.items
        FB = self.field_bits
        P = D + 8  # pool register: sums of up to 256 elements
        L = max(1, (n - 1).bit_length())

        def rows(name, shape):
            return [[Signal(shape, name=f"{name}{j}_{i}") for i in range(W)] for j in range(n)]

        cap, snap, pacc = rows("cap", signed(A)), rows("snap", signed(A)), rows("pacc", signed(P))
        meta = Signal(self.meta_layout)
        active = Signal()
        cnt = Signal(L + 1)

        def item(name):  # signals travelling with one item from stage to stage
            return {
                "v": Signal(name=f"{name}_v"), "l": Signal(L + 1, name=f"{name}_l"),
                "meta": Signal(self.meta_layout, name=f"{name}_meta"),
                "addr": Signal(FB, name=f"{name}_addr"),
            }  # fmt: skip

        def follow(dst, src):
            m.d.sync += [dst[k].eq(src[k]) for k in ("v", "l", "meta", "addr")]

        # stage 1: window sum, bias read
        s1 = item("s1")
        s1_diff = [Signal(signed(A), name=f"s1_diff{i}") for i in range(W)]
        lane_addr = Signal(FB)
        m.d.comb += self.bias_addr.eq(meta.b_addr + cnt)
        with m.If(self.capture):
            m.d.sync += [cap[j][i].eq(self.acc[j * W + i]) for j in range(n) for i in range(W)]
            m.d.sync += [meta.eq(self.meta), active.eq(1), cnt.eq(0)]
        m.d.sync += s1["v"].eq(active)
        with m.If(active):
            m.d.sync += [s1_diff[i].eq(cap[0][i] - snap[0][i]) for i in range(W)]
            m.d.sync += [s1["l"].eq(cnt), s1["meta"].eq(meta)]
            with m.If(~self.capture):
                m.d.sync += [cap[j][i].eq(cap[j + 1][i]) for j in range(n - 1) for i in range(W)]
            m.d.sync += [snap[j][i].eq(snap[j + 1][i]) for j in range(n - 1) for i in range(W)]
            m.d.sync += [snap[n - 1][i].eq(cap[0][i]) for i in range(W)]
            addr = Mux(cnt == 0, meta.out_addr, lane_addr + W)
            m.d.sync += [lane_addr.eq(addr), s1["addr"].eq(addr)]
            with m.If(cnt == n - 1):
                with m.If(~self.capture):
                    m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)
            with m.If(self.capture):
                m.d.sync += cnt.eq(0)

        # per-op constants of the requantizer, registered off the data path
        sh = d.shift
        rsh, lsh = Signal(unsigned(6)), Signal(range(MAX_LEFT_SHIFT + 1))
        right, rounding = Signal(), Signal(unsigned(A + 1))
        m.d.sync += [
            right.eq(sh > 0),
            rsh.eq(Mux(sh > 0, sh, 0)),
            lsh.eq(Mux(sh < 0, -sh, 0)),
            rounding.eq(Mux(sh > 0, Const(1, unsigned(A + 1)) << (sh - 1)[:6], 0)),
        ]

        # stage 2: + bias (+ the rounding constant of a right shift)
        s2 = item("s2")
        follow(s2, s1)
        s2_val = [Signal(signed(A + 2), name=f"s2_val{i}") for i in range(W)]
        for i in range(W):
            # diff + bias is exact modulo 2^A and fits A bits: wrap it back first, then round
            v = (s1_diff[i] + self.bias_data[i])[:A].as_signed()
            m.d.sync += s2_val[i].eq(v + rounding)

        # stage 3: the rounding shift
        s3a = item("s3a")
        follow(s3a, s2)
        s3a_val = [Signal(signed(A + MAX_LEFT_SHIFT + 2), name=f"s3a_val{i}") for i in range(W)]
        for i in range(W):
            v = s2_val[i]
            m.d.sync += s3a_val[i].eq(Mux(right, v >> rsh, v << lsh))

        # stage 4: saturate, relu_pre
        s3 = item("s3")
        follow(s3, s3a)
        s3_val = [Signal(signed(D), name=f"s3_val{i}") for i in range(W)]
        for i in range(W):
            wide = s3a_val[i]
            sat = Mux(wide > d.qmax, d.qmax, Mux(wide < d.qmin, d.qmin, wide))
            m.d.sync += s3_val[i].eq(Mux(d.relu_pre & (sat < 0), 0, sat))

        # stage 5: pool (pacc rows rotate one item per cycle)
        s4_val = [Signal(signed(D), name=f"s4_val{i}") for i in range(W)]
        s4_en = [Signal(name=f"s4_en{i}") for i in range(W)]
        s4_addr = Signal(FB)
        first, padw = s3["meta"].pool_first, s3["meta"].padwin
        empty = Mux(d.pool_avg, 0, d.qmin)
        k = d.avg_shift[:4].as_unsigned()
        half = Mux(k > 0, Const(1, unsigned(P)) << (k - 1)[:4], 0)
        for i in range(W):
            head, x = pacc[0][i], s3_val[i]
            combined = Mux(d.pool_avg, head + x, Mux(x > head, x, head))
            new = Signal(signed(P), name=f"s4_new{i}")
            m.d.comb += new.eq(Mux(padw, Mux(first, empty, head), Mux(first, x, combined)))
            pooled = Signal(signed(P), name=f"s4_pooled{i}")
            m.d.comb += pooled.eq(Mux(d.pool_avg, (new + half) >> k, new))
            with m.If(s3["v"]):
                m.d.sync += [pacc[j][i].eq(pacc[j + 1][i]) for j in range(n - 1)]
                m.d.sync += pacc[n - 1][i].eq(new)
            lane = (s3["l"] << (W.bit_length() - 1)) + i
            m.d.sync += [
                s4_en[i].eq(s3["v"] & s3["meta"].pool_last & (lane < s3["meta"].nvalid)),
                s4_val[i].eq(Mux(d.relu_post & (pooled < 0), 0, pooled)),
            ]
        m.d.sync += s4_addr.eq(s3["addr"])

        # stage 6: write
        m.d.comb += self.wr_addr.eq(s4_addr)
        for i in range(W):
            m.d.comb += [self.wr_en[i].eq(s4_en[i]), self.wr_data[i].eq(s4_val[i])]
        m.d.comb += self.busy.eq(active | s1["v"] | s2["v"] | s3["v"] | Cat(*s4_en).any())
        return m
