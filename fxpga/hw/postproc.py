"""Serial post-processing: bias, rounding shift, saturation, ReLU, fused max/avg pooling."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .compiler import CHANNEL_SHIFT_BITS, DESC_FIELDS, MAX_LEFT_SHIFT, avg_divide_shift
from .desc import descriptor_layout
from .fanout import register_copies, share


class PostProcessor(wiring.Component):
    """Turns the MAC array's accumulators into output feature-map writes, ``post_lanes`` lanes
    (one *item*) per cycle, ``items = lanes / post_lanes`` cycles per window.

    On ``capture`` (the window's last tap has reached the accumulators) all ``lanes``
    accumulators are latched together with the window's metadata; then item ``j`` (lanes
    ``j·post_lanes … j·post_lanes + post_lanes − 1``) is processed in cycle
    ``capture + 1 + j`` through an 11-stage pipeline, each lane of the item in parallel, with at
    most one carry chain or three mux levels per stage (for fmax):

    1. window sum = ``acc − snapshot`` (modulo ``2^acc_bits``; the snapshot becomes ``acc``),
       or ``acc`` itself when ``snapshots=False`` (the MAC array clears its accumulators on
       ``capture``); the bias row read is issued; which lanes hold real channels (``< nvalid``);
    2. ``v = + bias`` (wrapped to ``acc_bits``); with ``channel_shifts``, the lane's shift
       ``s`` = the op's + the offset read beside its bias (``shift_data``);
    3. the coarse shift, by ``t = s − 1``: ``s > 0``: ``v >> (t & ~7)`` (arithmetic),
       ``s ≤ 0``: ``v << (1 − s)``;
    4. the fine shift ``>> (t & 7)`` when ``s > 0``;
    5. ``(v + [s > 0]) >> 1``: the rounded ``(v + 2^(s−1)) >> s``, or ``v << −s``;
    6. compare with ``qmax`` and ``qmin``;
    7. saturate to ``[qmin, qmax]``; ReLU if ``relu_pre``;
    8. pool: the first window of a pool output loads the lane's pool register, the others
       take the max or add; a window in pool padding contributes nothing;
    9. avg pool: ``+ 2^(k−1)``; with ``divide`` (``fields`` has ``EngineConfig.avg_divide``'s):
       ``n = 2·sum + avg_off`` (non-negative);
    10. avg pool: ``>> k``; with ``divide``: ``((n · avg_mul) >> S) − 2^(D−1)``, the exact
       rounded average (``compiler.avg_divide_fields``); then ReLU if ``relu_post``;
    11. write lane ``l`` (channel ``g·lanes + l``) to ``wr_addr + i`` (``wr_addr =
       out_addr + j·post_lanes``) where ``l < nvalid`` and it was the pool's last window.

    With ``fields`` holding ``EngineConfig.branches``' (``add``), six more stages follow stage
    10 (``ADD_STAGES``), before the write. Where the op adds, they read the other operand's
    ``post_lanes`` words at ``wr_addr + skip_off`` of the buffer written (``skip_addr``;
    ``skip_data`` must hold them ``wide_latency`` cycles later) and compute
    ``relu?(sat(align(v, a_shift) + align(skip, b_shift)))``, ``align`` being the
    requantizer's rounding shift and saturation (``golden.align``); otherwise ``v`` passes:

    A1. ``+ 2^(s−1)`` for a right shift ``s`` (each operand its own);
    A2. the coarse shift, by multiples of 4, right (arithmetic) or left;
    A3. the fine shift (0-3);
    A4. compare each with the data range;
    A5. saturate each and add;
    A6. saturate the sum (its top two bits), ReLU if ``add_relu``.

    **Latency**: item ``j``'s writes happen in cycle ``capture + 11 + j`` (``LATENCY`` = 11;
    12 with ``divide``, whose product has a stage of its own; ``ADD_STAGES`` more with the
    add).
    **Throughput**: one window per ``items`` cycles; ``capture`` must not come more often
    (the ``TapGenerator`` guarantees it). Exactly matches ``golden.step`` for conv/linear
    followed by the fused element-wise layers.

    ``copies > 1``: the latch and shift enables of the ``items`` rows of accumulator
    registers come from register copies, one per row (``fanout.register_copies``), made from
    ``capture_next``, which must be ``capture`` one cycle early (it is unused otherwise).
    """

    LATENCY = 11
    ADD_STAGES = 6

    def __init__(
        self,
        lanes: int,
        data_bits: int,
        acc_bits: int,
        bias_row_bits: int,
        post_lanes: int = 1,
        field_bits: int = 24,
        coord_bits: int | None = None,
        copies: int = 1,
        snapshots: bool = True,
        fields: tuple[str, ...] = DESC_FIELDS,  # the descriptor's (compiler.desc_fields)
        wide_latency: int = 3,  # the buffers' wide reads (FeatureBuffer.wide_latency)
        channel_shifts: bool = False,  # EngineConfig.channel_shifts: a shift offset per lane
        unsigned_values: bool = False,  # EngineConfig.unsigned: values of data_bits + 1 bits
    ):
        self.wide_latency = wide_latency
        self.channel_shifts = channel_shifts
        # the width of a value between the stages: an unsigned word needs a bit more
        self.value_bits = data_bits + int(unsigned_values)
        assert lanes % post_lanes == 0
        self.snapshots = snapshots
        self.divide = divide = "avg_mul" in fields  # EngineConfig.avg_divide's fields
        self.adds = adds = "add" in fields  # EngineConfig.branches' fields
        # the divider's product has a stage of its own
        self.latency = self.LATENCY + int(divide) + self.ADD_STAGES * int(adds)
        self.copies = min(copies, lanes // post_lanes)
        self.field_bits = FB = field_bits
        self.lanes, self.data_bits, self.acc_bits = lanes, data_bits, acc_bits
        self.post_lanes, self.items = post_lanes, lanes // post_lanes
        meta = data.StructLayout({
            "padwin": 1, "pool_first": 1, "pool_last": 1,
            "out_addr": unsigned(FB), "b_addr": unsigned(FB), "nvalid": unsigned(FB),
        })  # fmt: skip
        self.meta_layout = meta
        ports = {}
        if adds:
            ports = {
                "skip_addr": Out(FB),
                "skip_data": In(signed(data_bits)).array(post_lanes),
            }
        if channel_shifts:  # beside bias_data
            ports["shift_data"] = In(CHANNEL_SHIFT_BITS).array(post_lanes)
        super().__init__(
            ports
            | {
                "desc": In(descriptor_layout(FB, coord_bits, fields)),
                "capture": In(1),
                "capture_next": In(1),
                "meta": In(meta),
                "acc": In(signed(acc_bits)).array(lanes),
                "bias_addr": Out(bias_row_bits).array(post_lanes),
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
        U = self.value_bits
        FB = self.field_bits
        P = U + 8  # pool register: sums of up to 256 elements
        L = max(1, (n - 1).bit_length())

        def rows(name, shape):
            return [[Signal(shape, name=f"{name}{j}_{i}") for i in range(W)] for j in range(n)]

        cap, pacc = rows("cap", signed(A)), rows("pacc", signed(P))
        snap = rows("snap", signed(A)) if self.snapshots else None
        meta = Signal(self.meta_layout)
        active = Signal()
        cnt = Signal(L + 1)

        # what travels with one item from stage to stage (the data travels beside it)
        item_layout = data.StructLayout(
            {"v": 1, "padwin": 1, "first": 1, "plast": 1, "ok": W, "addr": unsigned(FB)}
        )
        stages = [Signal(item_layout, name=f"s{k}") for k in range(1, self.latency)]

        # per-op constants, registered off the data path: those that select in the shifters,
        # compares and ReLUs in a copy per lane of the item (on ECP5, fanout.register_copies;
        # one register drove all 16 lanes' shifters of a 128-lane ULX3S: its critical path)
        # t = shift − 1 (the compiler bounds shift to [−MAX_LEFT_SHIFT, acc_bits], and the
        # lanes' shifts to acc_bits): t >= 0 shifts right by t + 1, t < 0 left by ~t = −shift
        T = signed(8)
        ctl_layout = data.StructLayout({
            "t": T, "k": unsigned(4),
            "qmax": signed(U), "qmin": signed(U), "relu_pre": 1, "relu_post": 1,
        })  # fmt: skip
        ctl_next = Signal(ctl_layout)
        m.d.comb += [
            ctl_next.t.eq(d.shift - 1),
            ctl_next.k.eq(d.avg_shift[:4]),
            ctl_next.qmax.eq(d.qmax),
            ctl_next.qmin.eq(d.qmin),
            ctl_next.relu_pre.eq(d.relu_pre),
            ctl_next.relu_post.eq(d.relu_post),
        ]
        ctl = [
            data.View(ctl_layout, c)
            for c in register_copies(m, ctl_next.as_value(), W, platform, "post_ctl")
        ]
        half = Signal(unsigned(P))
        m.d.sync += [
            half.eq(Mux(d.avg_shift[:4] > 0, Const(1, unsigned(P)) << (d.avg_shift - 1)[:4], 0)),
        ]

        # stage 1: window sum, bias read, the item's valid lanes
        s1 = stages[0]
        s1_diff = [Signal(signed(A), name=f"s1_diff{i}") for i in range(W)]
        lane_addr = Signal(FB)
        # the bias row read, b_addr + cnt, from a register copy per lane that follows cnt (an
        # adder after cnt feeding all lanes' bias memories was a 128-lane ULX3S's critical path)
        BR = len(self.bias_addr[0])
        baddr = Signal(BR)
        baddr_next = Signal(BR)
        m.d.comb += baddr_next.eq(
            Mux(self.capture, self.meta.b_addr, Mux(active & (cnt != n - 1), baddr + 1, baddr))
        )
        m.d.sync += baddr.eq(baddr_next)
        for i, q in enumerate(register_copies(m, baddr_next, W, platform, "bias_addr")):
            m.d.comb += self.bias_addr[i].eq(q)
        # the rows' latch (`capture`) and shift (`active`) enables, per copy
        active_next = Signal()
        m.d.comb += active_next.eq(active)
        with m.If(self.capture):
            m.d.comb += active_next.eq(1)
        with m.Elif(active & (cnt == n - 1)):
            m.d.comb += active_next.eq(0)
        m.d.sync += active.eq(active_next)
        # (with copies at all: one per row, each driving its row's W x acc_bits enables
        # only; a copy per two rows, 320 flip-flops' CE, had 10.7 ns of routing on a
        # 64-lane ULX3S, 69.4 MHz for 75)
        c = n if self.copies > 1 else 1
        if c > 1:
            loads = register_copies(m, self.capture_next, c, platform, "cap_load")
            shifts = register_copies(m, active_next, c, platform, "cap_shift")
        else:
            loads, shifts = [self.capture], [active]
        load, shift = share(loads, n), share(shifts, n)
        for j in range(n):
            with m.If(load[j]):
                m.d.sync += [cap[j][i].eq(self.acc[j * W + i]) for i in range(W)]
            if j < n - 1:  # (the last row only loads)
                with m.Elif(shift[j]):
                    m.d.sync += [cap[j][i].eq(cap[j + 1][i]) for i in range(W)]
            if snap is not None:
                with m.If(shift[j]):
                    nxt = snap[j + 1] if j < n - 1 else cap[0]
                    m.d.sync += [snap[j][i].eq(nxt[i]) for i in range(W)]
        m.d.sync += s1.v.eq(active)
        with m.If(active):
            if snap is not None:
                m.d.sync += [s1_diff[i].eq(cap[0][i] - snap[0][i]) for i in range(W)]
            else:
                m.d.sync += [s1_diff[i].eq(cap[0][i]) for i in range(W)]
            m.d.sync += [
                s1.padwin.eq(meta.padwin),
                s1.first.eq(meta.pool_first),
                s1.plast.eq(meta.pool_last),
            ]
            first_lane = cnt << (W.bit_length() - 1)
            m.d.sync += [s1.ok[i].eq(first_lane + i < meta.nvalid) for i in range(W)]
            addr = Mux(cnt == 0, meta.out_addr, lane_addr + W)
            m.d.sync += [lane_addr.eq(addr), s1.addr.eq(addr)]
            with m.If(cnt != n - 1):
                m.d.sync += cnt.eq(cnt + 1)
        with m.If(self.capture):  # (after the active block: its count restarts)
            m.d.sync += [meta.eq(self.meta), cnt.eq(0)]

        def lanes_of(name, shape, f):
            """Stage registers ``name{i}`` ← ``f(i)`` for each lane of the item."""
            out = [Signal(shape, name=f"{name}{i}") for i in range(W)]
            m.d.sync += [out[i].eq(f(i)) for i in range(W)]
            return out

        k_stage = 0

        def stage():
            """Starts the next stage: its item register ← the previous stage's. Returns the
            previous stage's item: the flags of the data this stage computes from."""
            nonlocal k_stage
            k_stage += 1
            m.d.sync += stages[k_stage].eq(stages[k_stage - 1])
            return stages[k_stage - 1]

        # stage 2: + bias (diff + bias is exact modulo 2^A and fits A bits: wrap it back); the
        # lane's t, with channel_shifts
        stage()
        s2 = lanes_of(
            "s2_val", signed(A), lambda i: (s1_diff[i] + self.bias_data[i])[:A].as_signed()
        )
        if self.channel_shifts:  # t per lane, travelling with its item
            t2 = lanes_of("s2_t", T, lambda i: ctl[i].t + self.shift_data[i])
        else:
            t2 = [ctl[i].t for i in range(W)]
        # stages 3-5: the rounding shift, coarse (multiples of 8 right, or left by 1 − s),
        # fine, then + the rounding bit and >> 1
        stage()

        def right(t):
            return ~t[-1]

        s3 = lanes_of(
            "s3_val",
            signed(A + MAX_LEFT_SHIFT + 2),
            lambda i: Mux(
                right(t2[i]), s2[i] >> Cat(Const(0, 3), t2[i][3:6]), (s2[i] << 1) << (~t2[i])[:3]
            ),
        )
        t3 = lanes_of("s3_t", T, lambda i: t2[i]) if self.channel_shifts else t2
        stage()
        s4 = lanes_of(
            "s4_val",
            signed(A + MAX_LEFT_SHIFT + 2),
            lambda i: s3[i] >> Mux(right(t3[i]), t3[i][:3], 0),
        )
        r4 = lanes_of("s4_r", 1, lambda i: right(t3[i])) if self.channel_shifts else None
        stage()
        s5 = lanes_of(
            "s5_val",
            signed(A + MAX_LEFT_SHIFT + 2),
            lambda i: (s4[i] + (r4[i] if r4 else right(t3[i]))) >> 1,
        )

        # stages 6-7: saturate to [qmin, qmax] (the compares, then the selection), relu_pre
        stage()
        over = lanes_of("s6_over", 1, lambda i: s5[i] > ctl[i].qmax)
        under = lanes_of("s6_under", 1, lambda i: s5[i] < ctl[i].qmin)
        s6 = lanes_of("s6_val", signed(U), lambda i: s5[i][:U])  # exact unless over/under
        stage()

        def saturate(i):
            sat = Mux(over[i], ctl[i].qmax, Mux(under[i], ctl[i].qmin, s6[i]))
            return Mux(ctl[i].relu_pre & (sat < 0), 0, sat)

        s7 = lanes_of("s7_sat", signed(U), saturate)
        # stage 8's choice, one-hot and registered beside s7 (a copy per lane, with the pool
        # registers' shift enable): the pool register's value becomes x (first window), head
        # (pool padding), empty (both), max(head, x) or head + x
        prev = stages[k_stage - 1]
        choice_layout = data.StructLayout(
            {"x": 1, "head": 1, "max": 1, "sum": 1, "shift": 1}  # (empty: none of them)
        )
        choice_next = Signal(choice_layout)
        inner = ~prev.padwin & ~prev.first
        m.d.comb += [
            choice_next.x.eq(~prev.padwin & prev.first),
            choice_next.head.eq(prev.padwin & ~prev.first),
            choice_next.max.eq(inner & ~d.pool_avg),
            choice_next.sum.eq(inner & d.pool_avg),
            choice_next.shift.eq(prev.v),
        ]
        choice = [
            data.View(choice_layout, c)
            for c in register_copies(m, choice_next.as_value(), W, platform, "s7_choice")
        ]
        empty = Signal(signed(U))
        m.d.sync += empty.eq(Mux(d.pool_avg, 0, d.qmin))

        # stage 8: pool (the pool registers rotate one item per cycle)
        stage()
        s8 = [Signal(signed(P), name=f"s8_val{i}") for i in range(W)]
        for i in range(W):
            head, x, c = pacc[0][i], s7[i], choice[i]
            # in a max pool the pool register holds a value of U bits (x or qmin): the compare
            # needs only its low bits (a short carry chain), and it selects between two values
            # computed beside it (one LUT after the compare)
            gt = x > head[:U].as_signed()
            rest = Mux(c.sum, head + x, Mux(c.x, x, Mux(c.head, head, empty)))
            if_gt, if_le = Signal(signed(P), name=f"s8_gt{i}"), Signal(signed(P), name=f"s8_le{i}")
            m.d.comb += [if_gt.eq(Mux(c.max, x, rest)), if_le.eq(Mux(c.max, head, rest))]
            new = Signal(signed(P), name=f"s8_new{i}")
            m.d.comb += new.eq(Mux(gt, if_gt, if_le))
            m.d.sync += s8[i].eq(new)
            with m.If(c.shift):  # (the item's valid flag)
                m.d.sync += [pacc[j][i].eq(pacc[j + 1][i]) for j in range(n - 1)]
                m.d.sync += pacc[n - 1][i].eq(new)

        # stages 9-10: avg pool's rounding shift (k = 0 for max pool), or its divide; relu_post
        stage()
        if self.divide:
            it, pooled = self._divide(m, d, s8, lanes_of, stage, P, D, U, platform)
        else:
            s9 = lanes_of("s9_val", signed(P + 1), lambda i: s8[i] + half)
            it = stage()
            pooled = [s9[i] >> ctl[i].k for i in range(W)]
        s10 = lanes_of(
            "s10_val",
            signed(U),
            lambda i: Mux(ctl[i].relu_post & (pooled[i] < 0), 0, pooled[i]),
        )
        s10_en = lanes_of("s10_en", 1, lambda i: it.v & it.plast & it.ok[i])
        if self.adds:
            s10, s10_en = self._add(m, d, s10, s10_en, stages, k_stage, lanes_of, stage, platform)
        assert k_stage == len(stages) - 1

        # stage 11 (17 with the add): write
        m.d.comb += self.wr_addr.eq(stages[-1].addr)
        for i in range(W):
            m.d.comb += [self.wr_en[i].eq(s10_en[i]), self.wr_data[i].eq(s10[i])]
        m.d.comb += self.busy.eq(active | Cat(st.v for st in stages).any())
        return m

    def _add(self, m, d, vals, en, stages, k10, lanes_of, stage, platform):
        """Stages A1-A6 (see the class): ``vals``/``en`` are stage 10's values and write
        enables, ``stages[k10]`` their item. Returns the values and enables to write."""
        D, W, U = self.data_bits, self.post_lanes, self.value_bits
        # the other operand's words, read for the item that is in stage 10 wide_latency
        # cycles later: the address is registered from the item a stage before that
        soff = Signal(signed(self.field_bits))
        skip_rd = Signal(self.field_bits)
        m.d.sync += soff.eq(d.skip_off)
        m.d.sync += skip_rd.eq(stages[k10 - self.wide_latency - 1].addr + soff)
        m.d.comb += self.skip_addr.eq(skip_rd)
        # per-op constants, a copy per lane: each operand's direction, coarse (multiples of
        # 4) and fine shift and rounding constant
        op_layout = {"add": 1, "relu": 1, "skip_u": 1, "out_u": 1}
        for x in "ab":
            op_layout |= {f"{x}_right": 1, f"{x}_c": unsigned(3), f"{x}_f": unsigned(2)}
            op_layout |= {f"{x}_rnd": unsigned(D)}
        op_layout = data.StructLayout(op_layout)
        nxt = Signal(op_layout)
        m.d.comb += [nxt.add.eq(d.add), nxt.relu.eq(d.add_relu)]
        if U > D:  # (signs: SIGN_SKIP, SIGN_OUT)
            m.d.comb += [nxt.skip_u.eq(d.signs[1]), nxt.out_u.eq(d.signs[2])]
        for x, sh in (("a", d.a_shift), ("b", d.b_shift)):
            mag = Mux(sh > 0, sh, -sh)[:5]
            m.d.comb += [
                nxt[f"{x}_right"].eq(sh > 0),
                nxt[f"{x}_c"].eq(mag[2:]),
                nxt[f"{x}_f"].eq(mag[:2]),
                nxt[f"{x}_rnd"].eq(Mux(sh > 0, Const(1, unsigned(D)) << (sh - 1)[:5], 0)),
            ]
        ctl = [
            data.View(op_layout, c)
            for c in register_copies(m, nxt.as_value(), W, platform, "add_ctl")
        ]
        X = U + D + 2  # an aligned operand before saturation (a left shift by up to D + 1)

        def both(name, shape, f):
            """A stage's registers for both operands: ``f(i, x)`` for lane i, operand x."""
            return {x: lanes_of(f"{name}_{x}", shape, lambda i, x=x: f(i, x)) for x in "ab"}

        def follow(name):  # the write enables travel beside the data
            return lanes_of(f"{name}_en", 1, lambda i: en[i])

        def shift(v, i, x, amount):
            return Mux(ctl[i][f"{x}_right"], v >> amount, v << amount)

        stage()  # A1: rounding constants (the other operand only where the op adds)
        # the other operand's word, zero-extended where it is unsigned
        skip = [self.skip_data[i] for i in range(W)]
        if U > D:
            skip = [Cat(s, Mux(ctl[i].skip_u, 0, s[-1])).as_signed() for i, s in enumerate(skip)]
        operand = {"a": vals, "b": [Mux(ctl[i].add, skip[i], 0) for i in range(W)]}
        a1 = both("a1", signed(X), lambda i, x: operand[x][i] + ctl[i][f"{x}_rnd"])
        en = follow("a1")
        stage()  # A2: coarse shift
        a2 = both("a2", signed(X), lambda i, x: shift(a1[x][i], i, x, ctl[i][f"{x}_c"] * 4))
        en = follow("a2")
        stage()  # A3: fine shift
        a3 = both("a3", signed(X), lambda i, x: shift(a2[x][i], i, x, ctl[i][f"{x}_f"]))
        en = follow("a3")
        stage()  # A4: compare with the operands' range: the data's, or U bits for an unsigned sum
        hi, lo = (1 << (D - 1)) - 1, -(1 << (D - 1))
        hi_u, lo_u = (1 << D) - 1, -(1 << D)

        def pick(i, when_signed, when_unsigned):
            """The signed output's choice, or with unsigned values the op's output's."""
            return Mux(ctl[i].out_u, when_unsigned, when_signed) if U > D else when_signed

        over = both("a4_over", 1, lambda i, x: pick(i, a3[x][i] > hi, a3[x][i] > hi_u))
        under = both("a4_under", 1, lambda i, x: pick(i, a3[x][i] < lo, a3[x][i] < lo_u))
        low = both("a4", signed(U), lambda i, x: a3[x][i][:U])
        en = follow("a4")
        stage()  # A5: saturate each, add

        def sat(x, i):
            top, bottom = pick(i, hi, hi_u), pick(i, lo, lo_u)
            return Mux(over[x][i], top, Mux(under[x][i], bottom, low[x][i]))

        total = lanes_of("a5_sum", signed(U + 1), lambda i: sat("a", i) + sat("b", i))
        en = follow("a5")
        stage()  # A6: saturate the sum, ReLU

        def final(i):
            # a signed sum of two D-bit values overflows when its top two bits differ; an
            # unsigned one is negative (its sign) or at least 2^D (then bit D)
            v = total[i]
            sat_v = Mux(v[D] == v[D - 1], v[:D].as_signed(), Mux(v[D], lo, hi))
            sat_v = pick(i, sat_v, Mux(v[-1], 0, Mux(v[D], hi_u, v[:D])))
            return Mux(ctl[i].relu & v[-1], 0, sat_v)

        out = lanes_of("a6_val", signed(U), final)
        return out, follow("a6")

    def _divide(self, m, d, s8, lanes_of, stage, P, D, U, platform):
        """Stages 9-11 of an engine that divides: ``n = 2·s8 + avg_off`` (a max pool's value
        passes beside it), the product ``n · avg_mul`` registered (on ECP5 as two partial
        products, ``avg_mul``'s low 18 bits and the rest: the MULT18X18Ds alone in their
        stage, their sum in the next), then its bits ``S … S + D − 1``, which are
        ``floor(n / 2k) ∈ [0, 2^D)``; inverting the top one subtracts ``2^(D−1)``. With
        unsigned values (``U = D + 1``) it is in ``[0, 2^(D+1))``, and the subtraction also
        sets bit ``D`` to ``q[S + D] XOR NOT q[S + D − 1]``.
        Returns the last stage's item and the pooled values."""
        S, N = avg_divide_shift(D), D + 10  # n < 2^N
        SPLIT = 18 if getattr(platform, "family", None) == "ecp5" else S  # MULT18X18D width
        avg, mul, off = Signal(), Signal(unsigned(S)), Signal(unsigned(P + 2))
        m.d.sync += [avg.eq(d.pool_avg), mul.eq(d.avg_mul), off.eq(d.avg_off)]
        s9 = lanes_of("s9_val", signed(P + 3), lambda i: Mux(avg, (s8[i] << 1) + off, s8[i]))
        stage()
        lo = lanes_of("s10_lo", unsigned(N + SPLIT), lambda i: s9[i][:N] * mul[:SPLIT])
        hi = lanes_of("s10_hi", unsigned(N + S - SPLIT), lambda i: s9[i][:N] * mul[SPLIT:])
        # (without the split `hi` is an empty product: zero, and no multiplier)
        kept = lanes_of("s10_max", signed(P + 3), lambda i: s9[i])
        it = stage()
        out = []
        for i in range(len(s9)):
            q = Signal(unsigned(N + S + 1), name=f"s11_prod{i}")
            m.d.comb += q.eq(lo[i] + (hi[i] << SPLIT))
            avg_v = Cat(q[S : S + D - 1], ~q[S + D - 1])
            if U > D:
                avg_v = Cat(avg_v, q[S + D] ^ ~q[S + D - 1])
            out.append(Mux(avg, avg_v.as_signed(), kept[i]))
        return it, out
