"""PLL divider search against icepll/ecppll's published settings, and the clock checks."""

import pytest

from fxpga.boards.build import uart_divisor
from fxpga.boards.clocks import ecp5_pll, ice40_pll, pll_for
from fxpga.errors import FxpgaError


@pytest.mark.parametrize(
    "f_in,f_out,want",
    [  # (DIVR, DIVF, DIVQ, FILTER_RANGE) as `icepll -i f_in -o f_out` prints them
        (12, 48, (0, 63, 4, 1)),
        (12, 30, (0, 79, 5, 1)),
        (48, 60, (0, 19, 4, 4)),
        (48, 100, (2, 49, 3, 1)),
        (48, 150, (1, 24, 2, 2)),
    ],
)
def test_ice40_pll_matches_icepll(f_in, f_out, want):
    pll = ice40_pll(f_in * 1e6, f_out * 1e6)
    p = pll.params
    assert (p["DIVR"], p["DIVF"], p["DIVQ"], p["FILTER_RANGE"]) == want
    assert pll.f_out == f_out * 1e6


@pytest.mark.parametrize(
    "f_in,f_out,want",
    [  # (CLKI_DIV, CLKFB_DIV, CLKOP_DIV) as ecppll generates them
        (12, 16, (3, 4, 37)),
        (25, 168.75, (4, 27, 4)),
        (25, 304.167, (6, 73, 2)),
    ],
)
def test_ecp5_pll_matches_ecppll(f_in, f_out, want):
    p = ecp5_pll(f_in * 1e6, f_out * 1e6).params
    assert (p["CLKI_DIV"], p["CLKFB_DIV"], p["CLKOP_DIV"]) == want


@pytest.mark.parametrize("mhz", [20, 33, 40, 42, 48, 60, 75, 90])
def test_pll_settings_stay_in_range(mhz):
    p = ice40_pll(12e6, mhz * 1e6)
    pfd = 12e6 / (p.params["DIVR"] + 1)
    assert 10e6 <= pfd <= 133e6 and 533e6 <= pfd * (p.params["DIVF"] + 1) <= 1066e6
    assert abs(p.f_out - mhz * 1e6) <= 0.01 * mhz * 1e6
    e = ecp5_pll(48e6, mhz * 1e6)
    assert 400e6 <= e.f_out * e.params["CLKOP_DIV"] <= 800e6
    assert e.f_out == pytest.approx(48e6 / e.params["CLKI_DIV"] * e.params["CLKFB_DIV"])


def test_unreachable_frequency_is_an_error():
    with pytest.raises(FxpgaError, match=r"ice40 PLL cannot make 1 MHz from 12 MHz"):
        pll_for("ice40", 12e6, 1e6)
    assert pll_for("ecp5", 25e6, 75e6).f_out == 75e6


def test_uart_divisor():
    assert uart_divisor(48e6, 1_000_000) == 48
    with pytest.raises(FxpgaError, match=r"2 MHz clock cannot make 1,000,000 baud"):
        uart_divisor(2e6, 1_000_000)
    with pytest.raises(FxpgaError, match=r"within 2%"):
        uart_divisor(5.5e6, 1_000_000)


def test_fmax_is_printed_so_that_a_miss_shows():
    from fxpga.boards.build import mhz

    assert mhz(74.985, 75) == "74.98" and mhz(74.9, 75) == "74.9"  # one decimal would say 75.0
    assert mhz(75.04, 75) == "75.0" and mhz(77.63, 75) == "77.6" and mhz(41.6, 39.75) == "41.6"
