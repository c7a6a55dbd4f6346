"""The quantized model: the IR graph plus, per layer, formats, integer tensors and widths.

This is what ``fxpga quantize`` writes (see ``artifact.py``) and what the golden model, the
compiler and the engine consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ir
from .qformat import QFormat


@dataclass
class QLayer:
    """One IR node with its fixed-point contract.

    For conv/linear: ``w`` (int, format ``w_fmt``), ``b`` (int, at the accumulator scale
    ``fl_in + fl_w``), ``shift = fl_in + fl_w − fl_out``, ``acc_range``/``acc_bits`` bound the
    exact accumulator for any input in ``in_range``. With per-channel weight formats,
    ``w_fls`` holds output channel ``o``'s fl (``w_fmt.fl`` is their minimum), and ``b``,
    the accumulator scale and the shift are per channel (``w_fl_of``, ``shifts``; ``shift``
    is then undefined). Add and concat have their own output
    format and read several inputs: ``in_fmts`` / ``in_ranges`` hold one per input, in order
    (``in_fmt`` / ``in_range`` are the first's). Other ops keep their input's format.
    """

    node: ir.Node
    in_fmt: QFormat
    out_fmt: QFormat
    in_range: tuple[int, int]
    out_range: tuple[int, int]
    w_fmt: QFormat | None = None
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    acc_range: tuple[int, int] | None = None
    acc_bits: int | None = None
    stats: dict = field(default_factory=dict)
    in_fmts: tuple[QFormat, ...] = ()
    in_ranges: tuple[tuple[int, int], ...] = ()
    w_fls: tuple[int, ...] | None = None

    def __post_init__(self):
        self.in_fmts = tuple(self.in_fmts) or (self.in_fmt,)
        self.in_ranges = tuple(self.in_ranges) or (self.in_range,)
        if self.w_fls is not None:
            self.w_fls = tuple(int(f) for f in self.w_fls)
            if len(set(self.w_fls)) == 1:  # one fl for every channel: a per-layer format
                self.w_fmt = QFormat(self.w_fmt.bits, self.w_fls[0])
                self.w_fls = None
            else:
                self.w_fmt = QFormat(self.w_fmt.bits, min(self.w_fls))

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def per_channel(self) -> bool:
        """Whether the output channels' weights have formats of their own."""
        return self.w_fls is not None

    @property
    def w_fl_of(self) -> np.ndarray | int:
        """The weight fl: one per output channel (int array), or the layer's."""
        return np.array(self.w_fls) if self.per_channel else self.w_fmt.fl

    def weight_values(self) -> np.ndarray:
        """The weights' real values, ``w · 2^-fl_w``, each output channel at its own fl."""
        fl = np.reshape(self.w_fl_of, (-1, *(1,) * (self.w.ndim - 1)))
        return np.ldexp(self.w.astype(np.float64), -fl)

    @property
    def w_fl_text(self) -> str:
        """The weight fl as shown: ``5``, or ``5..7`` over the channels."""
        if self.per_channel:
            return f"{min(self.w_fls)}..{max(self.w_fls)}"
        return str(self.w_fmt.fl)

    @property
    def shift(self) -> int | None:
        """The requantizer's shift ``fl_in + fl_w − fl_out`` (per-layer weight formats)."""
        if self.w_fmt is None:
            return None
        if self.per_channel:
            raise ValueError(f"layer '{self.name}' has a shift per channel (QLayer.shifts)")
        return self.in_fmt.fl + self.w_fmt.fl - self.out_fmt.fl

    @property
    def shifts(self) -> np.ndarray | int:
        """The requantizer's shift: one per output channel, or the layer's."""
        return self.in_fmt.fl + self.w_fl_of - self.out_fmt.fl


@dataclass
class QModel:
    graph: ir.Graph
    input_fmt: QFormat
    layers: list[QLayer]
    scheme: str = "dynamic"
    provenance: dict = field(default_factory=dict)

    @property
    def output_fmt(self) -> QFormat:
        return self.layers[-1].out_fmt

    def __getitem__(self, name: str) -> QLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def fmt_of(self, tensor: str) -> QFormat:
        """The format of a tensor: the graph input's or a layer's output."""
        return self.input_fmt if tensor == ir.INPUT else self[tensor].out_fmt

    @property
    def max_acc_bits(self) -> int:
        return max((la.acc_bits for la in self.layers if la.acc_bits is not None), default=0)
