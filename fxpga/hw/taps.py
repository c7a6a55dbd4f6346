"""Window/address generator: walks one op's loop nest and emits one tap per cycle."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

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
        }
    )


class TapGenerator(wiring.Component):
    """Emits the taps of one op: loops g > py > px > dy > dx (windows) > ky > kx > c (taps).

    ``start`` (one cycle, with ``desc`` valid and held until ``done``) begins the walk; ``tap``
    is valid combinationally while ``busy``. A window of ``n`` taps (``n = KH·KW·C``, or 1 for
    a window in pool padding) occupies ``max(n, items)`` cycles: idle cycles first, then the
    taps, ``last`` on the n-th. So consecutive ``last`` taps are at least ``items`` cycles
    apart and the post-processor (``items`` cycles per window) never falls behind.
    Feature maps are HWC, so the taps of one kernel row are consecutive addresses.
    All positions and addresses are kept incrementally from constants the compiler
    precomputed: no multipliers. ``done`` pulses in the cycle after the final window.

    **Throughput**: one tap per cycle. **Cycles per op**: Σ over windows of ``max(n, items)``.
    """

    def __init__(self, lanes: int, items: int | None = None, field_bits: int = 24):
        self.lanes = lanes
        self.items = items or lanes
        self.field_bits = field_bits
        super().__init__(
            {
                "desc": In(descriptor_layout(field_bits)),
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

        S = signed(self.field_bits + 2)

        def reg(name, shape=S):
            return Signal(shape, name=name)

        # window-level state: conv output position (oy, ox), its input origin (iy0, ix0),
        # and the address terms ra0 = iy0·W·C, xc0 = ix0·C; "_p" = at the pool window's origin
        g, py, px, dy, dx = (reg(n) for n in ("g", "py", "px", "dy", "dx"))
        oy_p, ox_p, oy, ox = (reg(n) for n in ("oy_p", "ox_p", "oy", "ox"))
        iy0_p, ix0_p, iy0, ix0 = (reg(n) for n in ("iy0_p", "ix0_p", "iy0", "ix0"))
        ra0_p, xc0_p, ra0, xc0 = (reg(n) for n in ("ra0_p", "xc0_p", "ra0", "xc0"))
        wg, bbase, out_g, out_addr = reg("wg"), reg("bbase"), reg("out_g"), reg("out_addr")
        # tap-level state: koff = kx·C + c within a kernel row, kyWC = ky·W·C
        kx, ky, c, koff, kyWC, woff, t = (
            reg(n) for n in ("kx", "ky", "c", "koff", "kyWC", "woff", "t")
        )
        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        padwin = ~((oy >= 0) & (oy < d.OH) & (ox >= 0) & (ox < d.OW))
        win_len = Mux(padwin, 1, d.CKK)
        period = Mux(win_len > items, win_len, items)
        # bubbles lead, taps trail: every window's last tap ends its period, so consecutive
        # last taps (and captures) are at least `items` cycles apart whatever the lengths
        emitting = busy & (t >= period - win_len)
        last = busy & (t == period - 1)
        win_end = last
        iy = iy0 + ky
        ix = ix0 + kx
        inside = (iy >= 0) & (iy < d.H) & (ix >= 0) & (ix < d.W)

        tap = self.tap
        m.d.comb += [
            tap.mac.eq(emitting & ~padwin & inside),
            tap.addr.eq(d.in_base + ra0 + kyWC + xc0 + koff),
            tap.w_addr.eq(wg + woff),
            tap.last.eq(last),
            tap.padwin.eq(padwin),
            tap.pool_first.eq((dy == 0) & (dx == 0)),
            tap.pool_last.eq((dy == d.PKH - 1) & (dx == d.PKW - 1)),
            tap.out_addr.eq(out_addr),
            tap.b_addr.eq(bbase),
            tap.nvalid.eq(Mux(g == d.G - 1, d.O_last, lanes)),
        ]

        def reset_taps():
            m.d.sync += [kx.eq(0), ky.eq(0), c.eq(0), koff.eq(0), kyWC.eq(0), woff.eq(0), t.eq(0)]

        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            m.d.sync += [
                busy.eq(1), g.eq(0), py.eq(0), px.eq(0), dy.eq(0), dx.eq(0),
                oy_p.eq(d.oy0), oy.eq(d.oy0), ox_p.eq(d.ox0), ox.eq(d.ox0),
                iy0_p.eq(d.iy0), iy0.eq(d.iy0), ix0_p.eq(d.ix0), ix0.eq(d.ix0),
                ra0_p.eq(d.ra0), ra0.eq(d.ra0), xc0_p.eq(d.xc0), xc0.eq(d.xc0),
                wg.eq(d.w_base), bbase.eq(d.b_base), out_g.eq(d.out_base),
                out_addr.eq(d.out_base),
            ]  # fmt: skip
            reset_taps()
        with m.Elif(win_end):
            reset_taps()
            with m.If(dx != d.PKW - 1):
                m.d.sync += [dx.eq(dx + 1), ox.eq(ox + 1), ix0.eq(ix0 + d.SW), xc0.eq(xc0 + d.SWC)]
            with m.Else():
                m.d.sync += dx.eq(0)
                with m.If(dy != d.PKH - 1):
                    m.d.sync += [
                        dy.eq(dy + 1), oy.eq(oy + 1), iy0.eq(iy0 + d.SH), ra0.eq(ra0 + d.SHWC),
                        ox.eq(ox_p), ix0.eq(ix0_p), xc0.eq(xc0_p),
                    ]  # fmt: skip
                with m.Else():
                    m.d.sync += [dy.eq(0), out_addr.eq(out_addr + d.O)]
                    with m.If(px != d.POW - 1):
                        m.d.sync += [
                            px.eq(px + 1), ox_p.eq(ox_p + d.PSW), ix0_p.eq(ix0_p + d.PSW_SW),
                            xc0_p.eq(xc0_p + d.PSW_SWC), ox.eq(ox_p + d.PSW),
                            ix0.eq(ix0_p + d.PSW_SW), xc0.eq(xc0_p + d.PSW_SWC),
                            oy.eq(oy_p), iy0.eq(iy0_p), ra0.eq(ra0_p),
                        ]  # fmt: skip
                    with m.Else():
                        m.d.sync += [
                            px.eq(0),
                            ox_p.eq(d.ox0),
                            ix0_p.eq(d.ix0),
                            xc0_p.eq(d.xc0),
                            ox.eq(d.ox0),
                            ix0.eq(d.ix0),
                            xc0.eq(d.xc0),
                        ]
                        with m.If(py != d.POH - 1):
                            m.d.sync += [
                                py.eq(py + 1), oy_p.eq(oy_p + d.PSH),
                                iy0_p.eq(iy0_p + d.PSH_SH), ra0_p.eq(ra0_p + d.PSH_SHWC),
                                oy.eq(oy_p + d.PSH), iy0.eq(iy0_p + d.PSH_SH),
                                ra0.eq(ra0_p + d.PSH_SHWC),
                            ]  # fmt: skip
                        with m.Else():
                            m.d.sync += [
                                py.eq(0),
                                oy_p.eq(d.oy0),
                                iy0_p.eq(d.iy0),
                                ra0_p.eq(d.ra0),
                                oy.eq(d.oy0),
                                iy0.eq(d.iy0),
                                ra0.eq(d.ra0),
                            ]
                            with m.If(g != d.G - 1):
                                m.d.sync += [
                                    g.eq(g + 1),
                                    wg.eq(wg + d.CKK),
                                    bbase.eq(bbase + items),
                                    out_g.eq(out_g + lanes),
                                    out_addr.eq(out_g + lanes),
                                ]
                            with m.Else():
                                m.d.sync += [busy.eq(0), self.done.eq(1)]
        with m.Elif(busy):
            m.d.sync += t.eq(t + 1)
            with m.If(emitting & ~last):
                m.d.sync += [woff.eq(woff + 1), koff.eq(koff + 1)]
                with m.If(c != d.C - 1):
                    m.d.sync += c.eq(c + 1)
                with m.Else():
                    m.d.sync += c.eq(0)
                    with m.If(kx != d.KW - 1):
                        m.d.sync += kx.eq(kx + 1)
                    with m.Else():
                        m.d.sync += [kx.eq(0), koff.eq(0), ky.eq(ky + 1), kyWC.eq(kyWC + d.WC)]
        return m
