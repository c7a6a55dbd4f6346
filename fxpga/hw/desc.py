"""The layer descriptor as the hardware holds it: one signed field per ``DESC_FIELDS`` name.

Addresses, strides and counts are ``field_bits`` wide (chosen per engine from its memory
depths and data width, ``field_bits_for``); feature-map coordinates (``COORD_FIELDS``)
``coord_bits`` (by default the same; an engine built for one program sizes them to it,
``coord_bits_for``); flags and shift amounts have fixed small widths. The program memory
holds one 32-bit word per field.
"""

from __future__ import annotations

from amaranth import signed
from amaranth.lib import data

from ..errors import FxpgaError
from .compiler import DESC_FIELDS

HEADER_WORDS = 5  # n_ops, in_size, out_size, out_buf, out_base
MAX_FIELD_BITS = 32


COORD_FIELDS = frozenset(
    ("H", "W", "OH", "OW", "kx_max", "dy_max", "dx_max", "py_max", "px_max")
    + ("oy0", "ox0", "iy0", "ix0", "SH", "SW", "PSH", "PSW", "PSH_SH", "PSW_SW")
)
SMALL_FIELDS = {
    "in_buf": 2, "relu_pre": 2, "relu_post": 2, "pool_avg": 2, "shift": 8, "avg_shift": 6,
    "avg_mul": 32, "avg_off": 24, "dw": 3,  # compiler.avg_divide_fields: <= 2^30, < 2^21
    "out_buf": 2, "add": 2, "a_shift": 6, "b_shift": 6, "add_relu": 2,  # |shifts| <= 19
    "signs": 4,
}  # fmt: skip


def field_widths(
    field_bits: int, coord_bits: int | None = None, names: tuple[str, ...] = DESC_FIELDS
) -> dict[str, int]:
    """Each field's width; ``names``: the engine's fields (``compiler.desc_fields``)."""
    cb = coord_bits or field_bits
    return {n: SMALL_FIELDS.get(n, cb if n in COORD_FIELDS else field_bits) for n in names}


def descriptor_layout(
    field_bits: int, coord_bits: int | None = None, names: tuple[str, ...] = DESC_FIELDS
) -> data.StructLayout:
    return data.StructLayout(
        {n: signed(w) for n, w in field_widths(field_bits, coord_bits, names).items()}
    )


def coord_bits_for(descriptors: list[dict[str, int]]) -> int:
    """Signed width (with a bit to spare) for the coordinate fields of these ops and every
    position the address generator reaches walking them: conv outputs up to
    ``oy0 + py_max·PSH + dy_max``, inputs up to ``iy0 + (py_max·PSH + dy_max)·SH + KH``."""
    reach = 1
    for d in descriptors:
        kw = d["kx_max"] + 1
        kh = d["CKK"] // ((d["c_max"] + 1) * kw)
        oy = d["py_max"] * d["PSH"] + d["dy_max"]
        ox = d["px_max"] * d["PSW"] + d["dx_max"]
        reach = max(
            reach,
            *(abs(d[n]) for n in COORD_FIELDS),
            abs(d["oy0"] + oy),
            abs(d["ox0"] + ox),
            abs(d["iy0"] + oy * d["SH"] + kh),
            abs(d["ix0"] + ox * d["SW"] + kw),
        )
    return reach.bit_length() + 2


def field_bits_for(data_bits: int, *depths: int) -> int:
    """Signed width holding every address (with room for negative padding offsets), the
    saturation bounds and the shift."""
    addr = max(depths + (2,))
    return min(MAX_FIELD_BITS, max(data_bits + 1, (addr - 1).bit_length() + 3, 8))


def check_fits(desc: dict[str, int], widths: dict[str, int], where: str):
    for k, v in desc.items():
        lim = 1 << (widths[k] - 1)
        if not -lim <= v < lim:
            raise FxpgaError(
                f"{where}: descriptor field {k}={v} exceeds the engine's {widths[k]}-bit field"
            )
