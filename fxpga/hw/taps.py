"""Window/address generator: walks one op's loop nest and emits one tap per cycle."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .compiler import DESC_FIELDS
from .desc import descriptor_layout


def tap_layout(lanes: int, field_bits: int = 24) -> data.StructLayout:
    return data.StructLayout(
        {
            "mac": 1,  # multiply this cycle (0: bubble, padding or a pool-padding window)
            "addr": unsigned(field_bits),  # feature-map element to read
            "w_addr": unsigned(field_bits),  # weight index, the same in every lane's bank
            "last": 1,  # the window's final cycle of taps: post-processing takes it from here
            "padwin": 1,  # the window lies in pool padding (no conv output there)
            "pool_first": 1,
            "pool_last": 1,
            "out_addr": unsigned(field_bits),  # output element of lane 0 for this pool output
            "b_addr": unsigned(field_bits),  # bias row (post_lanes biases) of lane 0, this group
            "nvalid": unsigned(field_bits),  # lanes holding real output channels in this group
            # a depthwise op's tap: only lane `sel` (the channel read) has a weight for it
            "masked": 1,
            "sel": unsigned(max(1, (lanes - 1).bit_length())),
        }
    )


class TapGenerator(wiring.Component):
    """Emits the taps of one op: loops g > py > px > dy > dx (windows) > ky > kx > c (taps).

    ``start`` (one cycle, with ``desc`` valid from that cycle until ``done``) begins the
    walk; the first tap is on ``tap`` ``LATENCY`` cycles later, then one per cycle while
    ``busy``. A window of ``n`` taps (``n = KH·KW·C``, or 1 for a window in pool padding)
    occupies ``max(n, items)`` cycles: idle cycles first, then the taps, ``last`` on the n-th.
    So consecutive ``last`` taps are at least ``items`` cycles apart and the post-processor
    (``items`` cycles per window) never falls behind. Feature maps are HWC, so the taps of
    one kernel row are consecutive addresses. ``done`` pulses in the cycle after the final
    tap.

    Pipelined for fmax, with no multiplier and at most one carry chain between registers:
    a *window sequencer* holds the next window (its loop counters, positions and address
    terms, all kept incrementally from constants the compiler precomputed), a *tap walker*
    the current one (its taps' addresses, bounds and counts), and ``tap`` is a register.
    The sequencer steps when the walker has taken its window (with ``items >= 2`` in the cycle
    after, from registered loop flags: a window lasts at least 2 cycles), so it works a window
    ahead.

    **Throughput**: one tap per cycle. **Cycles per op**: ``LATENCY`` + Σ over windows of
    ``max(n, items)``.
    """

    LATENCY = 3  # start → the sequencer holds window 0 → the walker → the tap register

    def __init__(
        self,
        lanes: int,
        items: int | None = None,
        field_bits: int = 24,
        coord_bits: int | None = None,
        fields: tuple[str, ...] = DESC_FIELDS,  # the descriptor's (compiler.desc_fields)
        banks: int = 1,  # the channels a wide op's tap reads (dw = 2, 3)
        split: bool = False,  # channel-split ops (dw = 2): a group is lanes / banks channels
    ):
        self.lanes, self.banks, self.split = lanes, banks, split
        self.fields = fields
        self.items = items or lanes
        self.field_bits = field_bits
        self.coord_bits = coord_bits or field_bits
        super().__init__(
            {
                "desc": In(descriptor_layout(field_bits, self.coord_bits, self.fields)),
                "start": In(1),
                "busy": Out(1),
                "done": Out(1),
                "tap": Out(tap_layout(lanes, field_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        d = self.desc
        lanes, items = self.lanes, self.items

        S = signed(self.field_bits + 2)  # addresses and counts
        P = signed(self.coord_bits)  # positions (coord_bits has a bit to spare)

        # the loop state is loaded (start, take) before it is used: no reset, which keeps the
        # reset out of these registers' enable logic (an iCE40 flip-flop's reset needs its
        # enable); pending, walking and the tap register's flags are reset
        def regs(*names, shape=S):
            return [Signal(shape, name=n, reset_less=True) for n in names]

        def counter(name, maximum, shape=S):
            """A loop counter 0 … ``maximum`` kept as the count left, with registered
            ``first``/``last`` flags: no comparator between its registers and the selects."""
            left = Signal(shape, name=f"{name}_left", reset_less=True)
            first = Signal(name=f"{name}_first", reset_less=True)
            last = Signal(name=f"{name}_last", reset_less=True)
            return SimpleNamespace(
                first=first,
                last=last,
                restart=[left.eq(maximum), first.eq(1), last.eq(maximum == 0)],
                step=[left.eq(left - 1), first.eq(0), last.eq(left == 1)],
            )

        # ---- window sequencer: the next window. Its conv output position (oy, ox), input
        # origin (iy0, ix0) and address terms ra0 = iy0·W·C, xc0 = ix0·C; "_p" = at the pool
        # window's origin
        g = counter("g", d.g_max)
        py, px = counter("py", d.py_max, P), counter("px", d.px_max, P)
        dy, dx = counter("dy", d.dy_max, P), counter("dx", d.dx_max, P)
        oy_p, ox_p, oy, ox = regs("oy_p", "ox_p", "oy", "ox", shape=P)
        iy0_p, ix0_p, iy0, ix0 = regs("iy0_p", "ix0_p", "iy0", "ix0", shape=P)
        ra0_p, xc0_p, ra0, xc0 = regs("ra0_p", "xc0_p", "ra0", "xc0")
        wg, bbase, out_g, out_addr = regs("wg", "bbase", "out_g", "out_addr")
        # a depthwise op over several groups (g_c): the next group's ra0, its window g_c
        # channels on (else every group starts at the descriptor's ra0); a group's weights
        # are w_g on (its lanes' kernels; else CKK, its taps)
        groups_move = "g_c" in self.fields
        # output channels a group: lanes, or lanes / banks for a channel-split op (dw = 2)
        per_group = lanes
        if self.split:
            per_group = Mux(d.dw[1] & ~d.dw[0], lanes // self.banks, lanes)
        ra_g = regs("ra_g")[0] if groups_move else d.ra0
        pending = Signal()  # the sequencer holds a window the walker has not taken

        # ---- tap walker: the current window
        walking = Signal()  # a window is being walked
        w_pad, w_first, w_lastp = regs("w_pad", "w_first", "w_lastp", shape=1)
        w_out, w_b, w_nvalid = regs("w_out", "w_b", "w_nvalid")
        w_ix0, iy, ix = regs("w_ix0", "iy", "ix", shape=P)
        a, row, w, left = regs("a", "row", "w", "left")
        c, kx = counter("c", d.c_max), counter("kx", d.kx_max, P)
        dw = "dw" in self.fields  # depthwise ops: a weight per pixel of the kernel, per lane
        ci = Signal(range(max(2, lanes)), name="ci", reset_less=True)  # the channel read
        lead_cnt = Signal(range(items + 1), reset_less=True)
        in_lead = Signal(reset_less=True)  # the window's idle cycles are not over
        last = Signal(reset_less=True)  # this cycle emits the window's last tap

        emitting = walking & ~in_lead
        win_end = emitting & last
        take = pending & (~walking | win_end)  # the walker takes the sequencer's window

        # ---- the walker takes a window: bounds, counts and address terms. Per-op flags are
        # registered from the descriptor (valid from start; the first take is a cycle later)
        def in_pad(y, x):
            return ~((y >= 0) & (y < d.OH) & (x >= 0) & (x < d.OW))

        if items >= 3:
            # the window's pool-padding flag, registered: from the descriptor on start, then
            # from (oy, ox), which the sequencer updates the cycle after a take; a window
            # lasts >= 3 cycles, so the flag is ready at the next take
            pad = Signal(reset_less=True)
            with m.If(self.start):
                m.d.sync += pad.eq(in_pad(d.oy0, d.ox0))
            with m.Else():
                m.d.sync += pad.eq(in_pad(oy, ox))
        else:
            pad = in_pad(oy, ox)
        lead_nz, short = Signal(), Signal()  # idle cycles first; a 1-cycle window
        m.d.sync += [lead_nz.eq(d.lead != 0), short.eq((d.lead == 0) & (d.CKK == 1))]
        with m.If(take):
            m.d.sync += [
                walking.eq(1), w_pad.eq(pad),
                w_first.eq(dy.first & dx.first),
                w_lastp.eq(dy.last & dx.last),
                w_out.eq(out_addr), w_b.eq(bbase),
                w_nvalid.eq(Mux(g.last, d.O_last, per_group)),
                iy.eq(iy0), ix.eq(ix0), w_ix0.eq(ix0),
                a.eq(ra0 + xc0), row.eq(ra0 + xc0), w.eq(wg), *c.restart, *kx.restart, ci.eq(0),
                lead_cnt.eq(Mux(pad, items - 1, d.lead)),
                in_lead.eq(Mux(pad, items > 1, lead_nz)),
                left.eq(Mux(pad, 1, d.CKK)),
                last.eq(Mux(pad, items == 1, short)),
            ]  # fmt: skip
        with m.Elif(win_end):
            m.d.sync += walking.eq(0)
        with m.Elif(in_lead):
            m.d.sync += [lead_cnt.eq(lead_cnt - 1), last.eq((lead_cnt == 1) & (left == 1))]
            with m.If(lead_cnt == 1):
                m.d.sync += in_lead.eq(0)
        with m.Elif(emitting):
            m.d.sync += [left.eq(left - 1), last.eq(left == 2)]
            # a depthwise op's weight address moves with the kernel pixel, not the channel
            m.d.sync += w.eq(Mux(d.dw[0] & ~c.last, w, w + 1) if dw else w + 1)
            # (a wide depthwise op's channel loop counts taps of `banks` channels)
            c_step = Mux(d.dw[1], self.banks, 1) if dw and self.banks > 1 else 1
            with m.If(~c.last):
                m.d.sync += [*c.step, a.eq(a + c_step), ci.eq(ci + 1)]
            with m.Elif(~kx.last):  # the next pixel: + kx_inc skips the channels not read
                step = d.kx_inc if "kx_inc" in self.fields else 1
                m.d.sync += [*c.restart, *kx.step, ix.eq(ix + 1), a.eq(a + step), ci.eq(0)]
            with m.Else():  # next kernel row
                m.d.sync += [
                    *c.restart, *kx.restart, ix.eq(w_ix0), iy.eq(iy + 1),
                    row.eq(row + d.WC), a.eq(row + d.WC), ci.eq(0),
                ]  # fmt: skip

        # ---- the tap register
        tap = self.tap
        inside = (iy >= 0) & (iy < d.H) & (ix >= 0) & (ix < d.W)
        out_valid, finished = Signal(), Signal()
        m.d.sync += [
            tap.mac.eq(emitting & ~w_pad & inside),
            tap.addr.eq(a),
            tap.w_addr.eq(w),
            tap.last.eq(win_end),
            tap.padwin.eq(w_pad),
            tap.pool_first.eq(w_first),
            tap.pool_last.eq(w_lastp),
            tap.out_addr.eq(w_out),
            tap.b_addr.eq(w_b),
            tap.nvalid.eq(w_nvalid),
            tap.masked.eq(d.dw[0] if dw else 0),
            tap.sel.eq(ci),
            out_valid.eq(walking),
            finished.eq(win_end & ~pending),
            self.done.eq(finished),
        ]
        m.d.comb += self.busy.eq(pending | walking | out_valid)

        # ---- the sequencer: load window 0 on start, step when the walker has taken a window.
        # wraps[k]: loops dx … k are all at their last value (they restart at the step);
        # steps[k]: loop k counts at the step. With items >= 2 a window lasts 2 cycles or
        # more, so the walker never takes windows in consecutive cycles: the sequencer steps
        # the cycle after a take, from registered flags (each enable a flip-flop or two)
        lasts = [dx.last, dy.last, px.last, py.last, g.last]
        wraps = [Cat(*lasts[: k + 1]).all() for k in range(5)]
        steps = [~wraps[0]] + [wraps[k - 1] & ~wraps[k] for k in range(1, 5)]
        if items >= 2:
            took, wrap, step = Signal(), Signal(5), Signal(5)
            m.d.sync += [took.eq(take), wrap.eq(Cat(*wraps)), step.eq(Cat(*steps))]
        else:
            took, wrap, step = take, Cat(*wraps), Cat(*steps)
        with m.If(self.start):
            m.d.sync += [
                pending.eq(1), *g.restart, *py.restart, *px.restart, *dy.restart, *dx.restart,
                oy_p.eq(d.oy0), oy.eq(d.oy0), ox_p.eq(d.ox0), ox.eq(d.ox0),
                iy0_p.eq(d.iy0), iy0.eq(d.iy0), ix0_p.eq(d.ix0), ix0.eq(d.ix0),
                ra0_p.eq(d.ra0), ra0.eq(d.ra0), xc0_p.eq(d.xc0), xc0.eq(d.xc0),
                wg.eq(d.w_base), bbase.eq(d.b_base), out_g.eq(d.out_base),
                out_addr.eq(d.out_base),
            ]  # fmt: skip
            if groups_move:
                m.d.sync += ra_g.eq(d.ra0 + d.g_c)
        with m.Elif(took):
            with m.If(step[0]):
                m.d.sync += [*dx.step, ox.eq(ox + 1), ix0.eq(ix0 + d.SW), xc0.eq(xc0 + d.SWC)]
            with m.If(wrap[0]):
                m.d.sync += dx.restart
            with m.If(step[1]):
                m.d.sync += [
                    *dy.step, oy.eq(oy + 1), iy0.eq(iy0 + d.SH), ra0.eq(ra0 + d.SHWC),
                    ox.eq(ox_p), ix0.eq(ix0_p), xc0.eq(xc0_p),
                ]  # fmt: skip
            with m.If(wrap[1]):
                m.d.sync += [*dy.restart, out_addr.eq(out_addr + d.O)]
            with m.If(step[2]):
                m.d.sync += [
                    *px.step, ox_p.eq(ox_p + d.PSW), ix0_p.eq(ix0_p + d.PSW_SW),
                    xc0_p.eq(xc0_p + d.PSW_SWC), ox.eq(ox_p + d.PSW),
                    ix0.eq(ix0_p + d.PSW_SW), xc0.eq(xc0_p + d.PSW_SWC),
                    oy.eq(oy_p), iy0.eq(iy0_p), ra0.eq(ra0_p),
                ]  # fmt: skip
            with m.If(wrap[2]):
                m.d.sync += [
                    *px.restart, ox_p.eq(d.ox0), ix0_p.eq(d.ix0), xc0_p.eq(d.xc0),
                    ox.eq(d.ox0), ix0.eq(d.ix0), xc0.eq(d.xc0),
                ]  # fmt: skip
            with m.If(step[3]):
                m.d.sync += [
                    *py.step, oy_p.eq(oy_p + d.PSH),
                    iy0_p.eq(iy0_p + d.PSH_SH), ra0_p.eq(ra0_p + d.PSH_SHWC),
                    oy.eq(oy_p + d.PSH), iy0.eq(iy0_p + d.PSH_SH),
                    ra0.eq(ra0_p + d.PSH_SHWC),
                ]  # fmt: skip
            with m.If(wrap[3]):  # (with g_c the next group's window)
                m.d.sync += [
                    *py.restart, oy_p.eq(d.oy0), iy0_p.eq(d.iy0), ra0_p.eq(ra_g),
                    oy.eq(d.oy0), iy0.eq(d.iy0), ra0.eq(ra_g),
                ]  # fmt: skip
            with m.If(step[4]):  # after wrap[1]: out_addr starts the next group
                m.d.sync += [
                    *g.step, wg.eq(wg + (d.w_g if groups_move else d.CKK)), bbase.eq(bbase + items),
                    out_g.eq(out_g + per_group), out_addr.eq(out_g + per_group),
                ]  # fmt: skip
                if groups_move:
                    m.d.sync += ra_g.eq(ra_g + d.g_c)
            with m.If(wrap[4]):
                m.d.sync += pending.eq(0)
        return m
