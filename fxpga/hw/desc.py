"""The layer descriptor as the hardware holds it: one signed field per ``DESC_FIELDS`` name.

Every field has the same width, ``field_bits``, chosen per engine from its memory depths and
data width (``field_bits_for``); the program memory holds one 32-bit word per field.
"""

from __future__ import annotations

from amaranth import signed
from amaranth.lib import data

from ..errors import FxpgaError
from .compiler import DESC_FIELDS

HEADER_WORDS = 4  # n_ops, in_size, out_size, out_buf
MAX_FIELD_BITS = 32


def descriptor_layout(field_bits: int) -> data.StructLayout:
    return data.StructLayout({name: signed(field_bits) for name in DESC_FIELDS})


def field_bits_for(data_bits: int, *depths: int) -> int:
    """Signed width holding every address (with room for negative padding offsets), the
    saturation bounds and the shift."""
    addr = max(depths + (2,))
    return min(MAX_FIELD_BITS, max(data_bits + 1, (addr - 1).bit_length() + 3, 8))


def check_fits(desc: dict[str, int], field_bits: int, where: str):
    lim = 1 << (field_bits - 1)
    for k, v in desc.items():
        if not -lim <= v < lim:
            raise FxpgaError(
                f"{where}: descriptor field {k}={v} exceeds the engine's {field_bits}-bit fields"
            )
