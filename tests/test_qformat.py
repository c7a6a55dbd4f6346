"""Exhaustive checks of the integer primitives against exact rational arithmetic."""

from fractions import Fraction
from math import floor

import numpy as np
import pytest

from fxpga.errors import FxpgaError
from fxpga.quant.qformat import (
    QFormat,
    avg_round,
    fl_fit,
    quantize,
    reciprocal,
    requantize,
    signed_width,
)


def ref_requantize(acc: int, s: int, bits: int) -> int:
    v = floor(Fraction(acc, 2**s) + Fraction(1, 2)) if s > 0 else acc * 2 ** (-s)
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, v))


@pytest.mark.parametrize("bits", range(2, 7))
def test_requantize_exhaustive(bits):
    acc = np.arange(-(2**10), 2**10, dtype=np.int64)
    for s in range(-5, 9):
        got = requantize(acc, s, bits)
        want = np.array([ref_requantize(int(a), s, bits) for a in acc])
        np.testing.assert_array_equal(got, want, err_msg=f"bits={bits} s={s}")


def test_requantize_rounds_half_up_not_to_even():
    # 0.5 → 1, 1.5 → 2, 2.5 → 3, -0.5 → 0, -1.5 → -1, -2.5 → -2
    acc = np.array([1, 3, 5, -1, -3, -5])
    np.testing.assert_array_equal(requantize(acc, 1, 8), [1, 2, 3, 0, -1, -2])


def test_requantize_left_shift_saturates_without_overflow():
    acc = np.array([2**40, -(2**40), 3, -3, 2**62 - 1], dtype=np.int64)
    np.testing.assert_array_equal(
        requantize(acc, -30, 32), [2**31 - 1, -(2**31), 2**31 - 1, -(2**31), 2**31 - 1]
    )
    np.testing.assert_array_equal(requantize(np.array([1, -1]), -30, 32), [2**30, -(2**30)])


def test_requantize_python_ints():
    acc = np.array([2**80 + 2**9, -(2**80)], dtype=object)
    assert list(requantize(acc, 70, 32)) == [2**10, -(2**10)]


@pytest.mark.parametrize("bits", range(2, 6))
def test_quantize_exhaustive_grid(bits):
    # every multiple of 1/8 in [-6, 6], for fl from -2 to 5
    xs = [Fraction(k, 8) for k in range(-48, 49)]
    for fl in range(-2, 6):
        fmt = QFormat(bits, fl)
        got = quantize(np.array([float(x) for x in xs]), fmt)
        want = [
            max(fmt.qmin, min(fmt.qmax, floor(x * Fraction(2) ** fl + Fraction(1, 2)))) for x in xs
        ]
        np.testing.assert_array_equal(got, want, err_msg=f"{fmt}")


def test_avg_round_exhaustive():
    for d in range(1, 17):
        total = np.arange(-300, 301)
        want = [floor(Fraction(int(t), d) + Fraction(1, 2)) for t in total]
        np.testing.assert_array_equal(avg_round(total, d), want, err_msg=f"d={d}")


def test_reciprocal_divides_exactly_up_to_its_bound(rng):
    for d in (*range(1, 300), 1000, 4095, 65535):
        bound = 1 << 24
        m, s = reciprocal(d, bound)
        n = np.concatenate([np.arange(4 * d), bound - 1 - np.arange(4 * d)])
        n = np.concatenate([n, rng.integers(0, bound, 2000)])
        np.testing.assert_array_equal(n * m >> s, n // d, err_msg=f"d={d}")
    with pytest.raises(ValueError):
        reciprocal(0, 10)


def test_signed_width_exhaustive():
    for lo in range(-70, 1):
        for hi in range(0, 70):
            w = signed_width(lo, hi)
            assert -(2 ** (w - 1)) <= lo and hi <= 2 ** (w - 1) - 1
            assert w == 1 or lo < -(2 ** (w - 2)) or hi > 2 ** (w - 2) - 1


@pytest.mark.parametrize("bits", [2, 3, 8, 16])
def test_fl_fit_is_largest_without_saturation(bits):
    for absmax in [1e-3, 0.1, 0.49, 0.5, 0.51, 1.0, 1.7, 3.0, 100.0, 12345.6]:
        fl = fl_fit(absmax, bits)
        fits = quantize(np.array([absmax, -absmax]), QFormat(bits, fl))
        assert fits[0] < QFormat(bits, fl).qmax or absmax * 2**fl + 0.5 < 2 ** (bits - 1)
        over = QFormat(bits, fl + 1)
        assert absmax * 2.0 ** (fl + 1) + 0.5 >= 2 ** (bits - 1), (absmax, bits, fl)
        assert quantize(np.array([absmax]), over)[0] == over.qmax


def test_qformat_checks_and_repr():
    assert repr(QFormat(8, -3)) == "Q8.-3"
    assert (QFormat(8, 3).qmin, QFormat(8, 3).qmax, QFormat(8, 3).step) == (-128, 127, 0.125)
    with pytest.raises(FxpgaError, match=r"^bits must be in 2\.\.32, not 1$"):
        QFormat(1, 0)
    with pytest.raises(FxpgaError, match=r"^bits must be in 2\.\.32, not 33$"):
        QFormat(33, 0)
    with pytest.raises(FxpgaError, match=r"^fl must be an integer, not 1\.5$"):
        QFormat(8, 1.5)
