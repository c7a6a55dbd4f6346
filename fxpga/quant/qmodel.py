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
    exact accumulator for any input in ``in_range``. Add and concat have their own output
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

    def __post_init__(self):
        self.in_fmts = tuple(self.in_fmts) or (self.in_fmt,)
        self.in_ranges = tuple(self.in_ranges) or (self.in_range,)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def shift(self) -> int | None:
        if self.w_fmt is None:
            return None
        return self.in_fmt.fl + self.w_fmt.fl - self.out_fmt.fl


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
