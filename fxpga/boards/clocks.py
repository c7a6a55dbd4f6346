"""The boards' PLLs: divider search (as icepll / ecppll do it) and the ``sync`` domain.

``ice40_pll(f_in, f_out)`` and ``ecp5_pll(f_in, f_out)`` return the divider settings of the
closest frequency the PLL can make, with that frequency; ``PLLDomain`` instantiates the PLL
on the board's oscillator pin and holds ``sync`` in reset until it locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io

from ..errors import FxpgaError


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


class PLLDomain(Elaboratable):
    """Drives the ``sync`` domain (which the parent defines) at ``pll.f_out`` from the
    board's oscillator pin ``clk_pin`` (the raw port of ``platform.request(default_clk,
    dir="-")``).

    ``sync`` is held in reset until the PLL has locked and then for ``hold`` more cycles (on
    iCE40 block RAM reads return zeros for ~3 us after configuration).
    """

    def __init__(self, pll: PLL, clk_pin, hold: int = 1024):
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
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        timer = Signal(range(self.hold + 1))
        with m.If(~lock):
            m.d.por += timer.eq(0)
        with m.Elif(timer != self.hold):
            m.d.por += timer.eq(timer + 1)
        m.d.comb += [
            ClockSignal("sync").eq(clk),
            ClockSignal("por").eq(clk),
            ResetSignal("sync").eq(timer != self.hold),
        ]
        if platform is not None:
            platform.add_clock_constraint(clk, pll.f_out)
        return m
