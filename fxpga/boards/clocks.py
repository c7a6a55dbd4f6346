"""The boards' PLLs: divider search (as icepll / ecppll do it) and the ``sync`` domain.

``ice40_pll(f_in, f_out)`` and ``ecp5_pll(f_in, f_out)`` return the divider settings of the
closest frequency the PLL can make, with that frequency; ``PLLDomain`` instantiates the PLL
on the board's oscillator pin and holds ``sync`` in reset until it locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth import (
    Cat,
    ClockDomain,
    ClockSignal,
    Elaboratable,
    Instance,
    Module,
    Mux,
    ResetSignal,
    Signal,
)
from amaranth.lib import io

from ..errors import FxpgaError
from ..hw.fanout import fd1s3ax


@dataclass(frozen=True)
class PLL:
    family: str
    f_in: float  # Hz
    f_out: float  # Hz, achieved
    params: dict[str, int] = field(default_factory=dict)


def ice40_pll(f_in: float, f_out: float) -> PLL:
    """SB_PLL40 with simple feedback: ``f_out = f_in·(DIVF+1) / ((DIVR+1)·2^DIVQ)``, with the
    phase detector at 10-133 MHz and the VCO at 533-1066 MHz (the iCE40 sysCLOCK guide's
    limits, as icepll applies them); the first of the closest settings in icepll's order."""
    best = None
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                out = vco / 2**divq
                if best is None or abs(out - f_out) < abs(best[0] - f_out):
                    best = (out, divr, divf, divq, pfd)
    if best is None:
        raise FxpgaError(f"no iCE40 PLL setting for a {f_in / 1e6:g} MHz input")
    out, divr, divf, divq, pfd = best
    filter_range = next(
        i + 1 for i, hi in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12)) if pfd < hi
    )
    return PLL(
        "ice40", f_in, out, {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filter_range}
    )


def ecp5_pll(f_in: float, f_out: float) -> PLL:
    """EHXPLLL with CLKOP feedback: ``f_out = f_in·CLKFB_DIV / CLKI_DIV``, the VCO
    (``f_out·CLKOP_DIV``) at 400-800 MHz, as near 600 MHz as it goes, and the phase detector
    at 3.125-400 MHz (the ranges ecppll uses); the first of the closest settings in ecppll's
    order."""
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            ops = [d for d in range(1, 129) if 400e6 <= out * d <= 800e6]
            if ops and (best is None or abs(out - f_out) < abs(best[0] - f_out)):
                # the VCO nearest the middle of its range
                best = (out, clki, clkfb, min(ops, key=lambda d: abs(out * d - 600e6)))
    if best is None:
        raise FxpgaError(f"no ECP5 PLL setting for a {f_in / 1e6:g} MHz input")
    out, clki, clkfb, clkop = best
    return PLL("ecp5", f_in, out, {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop})


def pll_for(family: str, f_in: float, f_out: float) -> PLL:
    pll = ice40_pll(f_in, f_out) if family == "ice40" else ecp5_pll(f_in, f_out)
    if abs(pll.f_out - f_out) > 0.01 * f_out:
        raise FxpgaError(
            f"the {family} PLL cannot make {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz "
            f"(closest: {pll.f_out / 1e6:.4g} MHz)"
        )
    return pll


HOLD = 1024  # cycles of reset after the PLL locks


class PLLDomain(Elaboratable):
    """Drives the ``sync`` domain (which the parent defines) at ``pll.f_out`` from the
    board's oscillator pin ``clk_pin`` (the raw port of ``platform.request(default_clk,
    dir="-")``).

    ``sync`` is held in reset until the PLL has locked and then for ``hold`` more cycles (on
    iCE40 block RAM reads return zeros for ~3 us after configuration).

    iCE40: the reset is ``sync``'s reset signal, a net to every flip-flop with a reset.
    ECP5: ``sync`` is reset-less (``reset_less_sync``) and the hold drives the global set/reset
    through SGSR instead, as amaranth's own ECP5 clock domain does: GSR has its own low-skew
    network, where a reset net to ~10,000 flip-flops was the critical path of a 64-lane ULX3S
    build (15 ns of routing). GSR puts every flip-flop back to its initial value, so the hold
    counter and the two flip-flops that synchronise the release are FD1S3AX instances with
    GSR disabled (else GSR would hold them at zero for ever). This path cannot be simulated.
    """

    def __init__(self, pll: PLL, clk_pin, hold: int = HOLD):
        self.pll, self.clk_pin, self.hold = pll, clk_pin, hold

    def elaborate(self, platform):
        m = Module()
        pll, p = self.pll, self.pll.params
        clk, lock = Signal(name="pll_clk"), Signal(name="pll_lock")
        if pll.family == "ice40":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_PLLOUT_SELECT="GENCLK",
                p_DIVR=p["DIVR"],
                p_DIVF=p["DIVF"],
                p_DIVQ=p["DIVQ"],
                p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=self.clk_pin.io,
                i_RESETB=1,
                i_BYPASS=0,
                o_PLLOUTGLOBAL=clk,
                o_LOCK=lock,
            )
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", self.clk_pin)
            clk_in = clk_buf.i
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{pll.f_in / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{pll.f_out / 1e6:g}",
                a_ICP_CURRENT="12",
                a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED",
                p_INTFB_WAKE="DISABLED",
                p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED",
                p_OUTDIVIDER_MUXA="DIVA",
                p_CLKI_DIV=p["CLKI_DIV"],
                p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_DIV"] // 2,
                p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p["CLKFB_DIV"],
                i_RST=0,
                i_STDBY=0,
                i_CLKI=clk_in,
                i_CLKFB=clk,
                i_PHASESEL0=0,
                i_PHASESEL1=0,
                i_PHASEDIR=1,
                i_PHASESTEP=1,
                i_PHASELOADREG=1,
                i_PLLWAKESYNC=0,
                i_ENCLKOP=0,
                o_CLKOP=clk,
                o_LOCK=lock,
            )
        m.d.comb += ClockSignal("sync").eq(clk)
        if pll.family == "ecp5":
            self._gsr(m, clk, lock)
        else:
            m.domains.por = ClockDomain("por", reset_less=True, local=True)
            timer = Signal(range(self.hold + 1))
            rst = Signal(init=1)  # a flip-flop drives the reset net (its global buffer)
            with m.If(~lock):
                m.d.por += timer.eq(0)
            with m.Elif(timer != self.hold):
                m.d.por += timer.eq(timer + 1)
            m.d.por += rst.eq(timer != self.hold)
            m.d.comb += [ClockSignal("por").eq(clk), ResetSignal("sync").eq(rst)]
        # No platform.add_clock_constraint(clk): the net loses that name when yosys flattens
        # the design (nextpnr warns and ignores it); fxpga build gives nextpnr --freq instead.
        return m

    def _gsr(self, m: Module, clk, lock):
        """ECP5: count ``hold`` cycles after lock in GSR-immune flip-flops (FD1S3AX clears to
        0 at configuration), then release GSR (active low) two flip-flops later through SGSR."""
        width = self.hold.bit_length()
        nxt = Signal(width)
        timer = Cat(fd1s3ax(m, nxt[i], f"por_timer{i}", clk) for i in range(width))
        done = timer == self.hold
        m.d.comb += nxt.eq(Mux(~lock, 0, Mux(done, timer, timer + 1)))
        release = fd1s3ax(m, fd1s3ax(m, done, "por_gsr0", clk), "por_gsr1", clk)
        m.submodules.sgsr = Instance("SGSR", i_CLK=clk, i_GSR=release)

    @staticmethod
    def reset_less_sync(family: str) -> bool:
        """Whether the parent's ``sync`` domain must be reset-less (ECP5: GSR resets it)."""
        return family == "ecp5"
