"""Dynamic fixed-point formats and the integer primitives every later stage must reproduce.

A tensor in format ``QFormat(bits, fl)`` holds two's-complement integers ``q`` in
``[-2**(bits-1), 2**(bits-1) - 1]`` that stand for ``q * 2**-fl``; ``QFormat(bits, fl,
signed=False)`` holds ``[0, 2**bits - 1]`` (a tensor that cannot be negative: every bit
counts). ``fl`` may be negative or larger than ``bits``. See docs/numerics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FxpgaError

MIN_BITS = 2
MAX_BITS = 32


def check_bits(bits, where: str = "") -> int:
    """Return ``bits`` if it is an integer in 2..32, else raise a one-line error."""
    at = f"{where}: " if where else ""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise FxpgaError(f"{at}bits must be an integer in {MIN_BITS}..{MAX_BITS}, not {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise FxpgaError(f"{at}bits must be in {MIN_BITS}..{MAX_BITS}, not {bits}")
    return int(bits)


@dataclass(frozen=True, order=True)
class QFormat:
    """``bits``-wide two's complement (or, ``signed=False``, unsigned) with ``fl`` fractional
    bits: value = int × 2^-fl."""

    bits: int
    fl: int
    signed: bool = True

    def __post_init__(self):
        check_bits(self.bits)
        if isinstance(self.fl, bool) or not isinstance(self.fl, int | np.integer):
            raise FxpgaError(f"fl must be an integer, not {self.fl!r}")
        if not isinstance(self.signed, bool | np.bool_):
            raise FxpgaError(f"signed must be true or false, not {self.signed!r}")
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "fl", int(self.fl))
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def step(self) -> float:
        return 2.0**-self.fl

    def to_json(self) -> dict:
        return {"bits": self.bits, "fl": self.fl} | ({} if self.signed else {"signed": False})

    def __repr__(self):
        return f"{'Q' if self.signed else 'U'}{self.bits}.{self.fl}"


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integers a ``bits``-wide word holds: two's complement, or unsigned."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def signed_width(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in ``[lo, hi]`` (at least 1)."""
    lo, hi = int(lo), int(hi)
    bits = 1
    while lo < -(1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:
        bits += 1
    return bits


def fl_fit(absmax: float, bits: int, signed: bool = True) -> int:
    """Largest fl with which ``absmax`` still fits ``bits`` bits (no saturation); unsigned,
    ``bits`` hold what ``bits + 1`` signed bits do on the positive side."""
    if not signed:
        return fl_fit(absmax, bits + 1)
    if not absmax > 0 or not math.isfinite(absmax):
        return bits - 1
    # need absmax * 2**fl <= 2**(bits-1) - 1/2 (rounds to qmax at most)
    fl = (bits - 1) - math.ceil(math.log2(absmax))
    while absmax * 2.0**fl + 0.5 >= 2 ** (bits - 1) + 0.0:
        fl -= 1
    while absmax * 2.0 ** (fl + 1) + 0.5 < 2 ** (bits - 1):
        fl += 1
    return fl


def quantize(x, fmt: QFormat) -> np.ndarray:
    """Float → integer: round half up (``floor(x·2^fl + 1/2)``), then saturate. Returns int64."""
    x = np.asarray(x, dtype=np.float64)
    q = np.floor(np.ldexp(x, fmt.fl) + 0.5)
    return np.clip(q, fmt.qmin, fmt.qmax).astype(np.int64)


def dequantize(q, fl: int) -> np.ndarray:
    return np.ldexp(np.asarray(q, dtype=np.float64), -fl)


def saturate(x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    return np.clip(x, *int_range(bits, signed))


def shift_round(acc: np.ndarray, s: int) -> np.ndarray:
    """``s > 0``: ``(acc + 2^(s-1)) >> s`` (arithmetic, round half up); ``s ≤ 0``: ``acc << -s``.

    No saturation here; callers that shift left must bound ``acc`` first (see requantize).
    """
    if s > 0:
        return (acc + (1 << (s - 1))) >> s
    return acc << (-s)


def requantize(acc: np.ndarray, s: int, bits: int, signed: bool = True) -> np.ndarray:
    """The requantizer: rounding shift by ``s = fl_in + fl_w − fl_out``, then saturate to
    ``bits`` (two's complement, or ``[0, 2^bits − 1]`` unsigned).

    Works on int64 or Python-object arrays; a left shift never overflows int64 because values
    that would leave the output range are saturated before shifting.
    """
    acc = np.asarray(acc)
    lo, hi = int_range(bits, signed)
    if s > 0:
        return saturate(shift_round(acc, s), bits, signed)
    k = -s
    lo_k = -((-lo) >> k)  # ceil(lo / 2^k)
    hi_k = hi >> k  # floor(hi / 2^k)
    inside = np.clip(acc, lo_k, hi_k) << k
    return np.where(acc > hi_k, hi, np.where(acc < lo_k, lo, inside))


def requantize_channels(acc: np.ndarray, shifts, bits: int, signed: bool = True) -> np.ndarray:
    """``requantize`` with one shift per channel (axis 1 of ``acc``), or one for all: each
    group of channels that share a shift is requantized as a whole. Returns int64."""
    acc = np.asarray(acc)
    if np.ndim(shifts) == 0:
        return requantize(acc, int(shifts), bits, signed).astype(np.int64)
    shifts = np.asarray(shifts)
    out = np.empty(acc.shape, dtype=np.int64)
    for s in np.unique(shifts):
        lanes = shifts == s
        out[:, lanes] = requantize(acc[:, lanes], int(s), bits, signed)
    return out


def clip_bounds(fmt: QFormat, lo: float | None, hi: float | None) -> tuple[int, int]:
    """The integer bounds of ``clamp(x, lo, hi)`` on ``fmt``'s grid: the representable values
    inside ``[lo, hi]``, ``ceil(lo·2^fl)`` to ``floor(hi·2^fl)`` (exact: scaling by a power of
    two), within ``[qmin, qmax]``; ``None`` is unbounded."""
    qlo = fmt.qmin if lo is None else max(fmt.qmin, math.ceil(math.ldexp(lo, fmt.fl)))
    qhi = fmt.qmax if hi is None else min(fmt.qmax, math.floor(math.ldexp(hi, fmt.fl)))
    return qlo, qhi


def avg_round(total: np.ndarray, d: int) -> np.ndarray:
    """Average of ``d`` integers whose sum is ``total``, rounded half up: ``floor(total/d + 1/2)``.

    Computed exactly as ``(2·total + d) // (2·d)`` (floor division).
    """
    return (2 * total + d) // (2 * d)


def reciprocal(d: int, bound: int) -> tuple[int, int]:
    """``(m, s)`` with ``n // d == (n · m) >> s`` for every integer ``0 ≤ n < bound``: division
    by a constant as a multiply and a shift (Granlund and Montgomery, PLDI 1994).

    ``s = N + ceil(log2 d)`` with ``2^N ≥ bound`` and ``m = ceil(2^s / d)``: then
    ``e = m·d − 2^s < d`` and ``n·m / 2^s = n/d + n·e / (d·2^s)``, whose second term is below
    ``1/d``, too little to reach the next integer.
    """
    if d < 1 or bound < 1:
        raise ValueError(f"reciprocal needs d >= 1 and bound >= 1, got {d}, {bound}")
    s = (bound - 1).bit_length() + (d - 1).bit_length()
    return -(-(1 << s) // d), s
