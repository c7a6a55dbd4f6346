"""The layer descriptor as the hardware holds it: one signed field per ``DESC_FIELDS`` name."""

from __future__ import annotations

from amaranth import signed
from amaranth.lib import data

from .compiler import DESC_FIELDS

FIELD_BITS = 24  # every descriptor field, signed; one 32-bit program word per field
HEADER_WORDS = 4  # n_ops, in_size, out_size, out_buf

Descriptor = data.StructLayout({name: signed(FIELD_BITS) for name in DESC_FIELDS})


def check_fits(desc: dict[str, int], where: str):
    from ..errors import FxpgaError

    lim = 1 << (FIELD_BITS - 1)
    for k, v in desc.items():
        if not -lim <= v < lim:
            raise FxpgaError(f"{where}: descriptor field {k}={v} exceeds {FIELD_BITS} bits")
