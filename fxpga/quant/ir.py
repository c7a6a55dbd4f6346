"""A small typed graph IR: a DAG of named tensors, each node with its per-sample shapes.

Every node produces one tensor named after it and reads the tensors named in ``inputs`` (the
graph input is ``INPUT``). Nodes are kept in topological order and the last one is the output.
Most ops take one tensor and most networks are chains, so ``inputs`` may be left empty: it then
means the node before (``Graph`` fills it in). ``Add`` and ``Concat`` take several.
Shapes exclude the batch dimension: ``(C, H, W)`` or ``(F,)``.
Weights are float64 numpy arrays (after BatchNorm folding, see ``fold_batchnorm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FxpgaError

Shape = tuple[int, ...]
INPUT = "input"  # the name of the graph's input tensor


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, not {v!r}")
    return v


def _window_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@dataclass
class Node:
    name: str
    source: str | None = field(default=None, kw_only=True)  # "file.py:12" where fx knows it
    inputs: tuple[str, ...] = field(default=(), kw_only=True)  # () = the node before
    in_shape: Shape = field(default=(), kw_only=True)  # the first input's
    out_shape: Shape = field(default=(), kw_only=True)

    op = "node"
    has_weights = False
    arity = 1  # how many inputs; None: two or more

    def where(self) -> str:
        return f"layer '{self.name}'" + (f" ({self.source})" if self.source else "")

    def infer(self, in_shape: Shape) -> Shape:
        raise NotImplementedError

    def infer_all(self, shapes: list[Shape]) -> Shape:
        """The output shape from every input's shape (single-input ops: ``infer``)."""
        return self.infer(shapes[0])

    def attrs(self) -> dict:
        return {}

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _need_chw(node: Node, shape: Shape):
    if len(shape) != 3:
        raise FxpgaError(f"{node.where()}: {node.op} needs a (C, H, W) input, got {shape}")


@dataclass
class Conv(Node):
    """2-D convolution, dilation=1, zero padding. ``weight``: (O, I / groups, KH, KW); with
    ``groups`` > 1 output channel ``o`` sees input channels ``g·I/groups …`` of its group
    ``g = o // (O / groups)`` (depthwise: ``groups = I``)."""

    weight: np.ndarray = None
    bias: np.ndarray = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1

    op = "conv"
    has_weights = True

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def infer(self, s):
        _need_chw(self, s)
        o, i, kh, kw = self.weight.shape
        i *= self.groups
        if s[0] != i or o % self.groups:
            raise FxpgaError(f"{self.where()}: conv expects {i} input channels, got shape {s}")
        h = _window_out(s[1], kh, self.stride[0], self.padding[0])
        w = _window_out(s[2], kw, self.stride[1], self.padding[1])
        if h < 1 or w < 1:
            raise FxpgaError(f"{self.where()}: input {s} is smaller than the kernel {kh}x{kw}")
        return (o, h, w)

    def attrs(self):
        return {
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
        } | ({"groups": self.groups} if self.groups != 1 else {})

    def float_forward(self, x):
        w = torch.from_numpy(self.weight).to(x.dtype)
        b = torch.from_numpy(self.bias).to(x.dtype)
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding, groups=self.groups)


@dataclass
class Linear(Node):
    """Fully connected: ``weight`` (O, I). The compiler runs it as a 1×1 convolution."""

    weight: np.ndarray = None
    bias: np.ndarray = None

    op = "linear"
    has_weights = True

    def infer(self, s):
        o, i = self.weight.shape
        if s != (i,):
            raise FxpgaError(f"{self.where()}: linear expects ({i},) inputs, got shape {s}")
        return (o,)

    def float_forward(self, x):
        w = torch.from_numpy(self.weight).to(x.dtype)
        b = torch.from_numpy(self.bias).to(x.dtype)
        return F.linear(x, w, b)


@dataclass
class BatchNorm(Node):
    """Inference BatchNorm, only present until ``fold_batchnorm`` merges it into a conv/linear."""

    scale: np.ndarray = None  # gamma / sqrt(var + eps)
    shift: np.ndarray = None  # beta - mean * scale

    op = "batchnorm"

    def infer(self, s):
        if s[0] != self.scale.shape[0]:
            raise FxpgaError(
                f"{self.where()}: batchnorm has {self.scale.shape[0]} channels, input has shape {s}"
            )
        return s

    def float_forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        sc = torch.from_numpy(self.scale).to(x.dtype).reshape(shape)
        sh = torch.from_numpy(self.shift).to(x.dtype).reshape(shape)
        return x * sc + sh


@dataclass
class ReLU(Node):
    op = "relu"

    def infer(self, s):
        return s

    def float_forward(self, x):
        return torch.relu(x)


@dataclass
class Clip(Node):
    """``clamp(x, lo, hi)`` (``None``: unbounded on that side): ReLU6 is (0, 6), Hardtanh
    (lo, hi), ``torch.clamp``. In fixed point an exact clamp to the representable values in
    ``[lo, hi]`` (``qformat.clip_bounds``, docs/numerics.md)."""

    lo: float | None = 0.0
    hi: float | None = 6.0
    op = "clip"

    def infer(self, s):
        return s

    def attrs(self):
        return {"lo": self.lo, "hi": self.hi}

    def float_forward(self, x):
        return torch.clamp(x, self.lo, self.hi)


@dataclass
class Pad(Node):
    """Zero padding of (C, H, W) by ``pads`` = (left, right, top, bottom), as ``F.pad`` and
    ``nn.ZeroPad2d`` give it: TensorFlow's asymmetric 'SAME' padding (pads after only, for
    stride 2 on an even input) in a TF export."""

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    op = "pad"

    def infer(self, s):
        _need_chw(self, s)
        left, right, top, bottom = self.pads
        return (s[0], s[1] + top + bottom, s[2] + left + right)

    def attrs(self):
        return {"pads": list(self.pads)}

    def float_forward(self, x):
        return F.pad(x, self.pads)


@dataclass
class _Pool(Node):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)

    def infer(self, s):
        _need_chw(self, s)
        kh, kw = self.kernel
        if self.padding[0] * 2 > kh or self.padding[1] * 2 > kw:
            raise FxpgaError(f"{self.where()}: padding {self.padding} exceeds half the kernel")
        h = _window_out(s[1], kh, self.stride[0], self.padding[0])
        w = _window_out(s[2], kw, self.stride[1], self.padding[1])
        if h < 1 or w < 1:
            raise FxpgaError(f"{self.where()}: input {s} is smaller than the window {kh}x{kw}")
        return (s[0], h, w)

    def attrs(self):
        return {
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }


@dataclass
class MaxPool(_Pool):
    op = "maxpool"

    def float_forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


@dataclass
class AvgPool(_Pool):
    """Average over the window, zero padding counted (``count_include_pad=True``)."""

    op = "avgpool"

    def float_forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)


@dataclass
class Flatten(Node):
    op = "flatten"

    def infer(self, s):
        return (int(np.prod(s)),)

    def float_forward(self, x):
        return torch.flatten(x, 1)


@dataclass
class Add(Node):
    """Elementwise sum of two or more tensors of one shape (a residual connection). In fixed
    point each input is aligned to the output's format, then the sum saturated
    (docs/numerics.md)."""

    op = "add"
    arity = None

    def infer_all(self, shapes):
        if any(s != shapes[0] for s in shapes):
            raise FxpgaError(
                f"{self.where()}: add needs inputs of one shape, got "
                f"{', '.join(str(s) for s in shapes)}"
            )
        return shapes[0]

    def float_forward(self, *xs):
        return sum(xs[1:], xs[0])


@dataclass
class Concat(Node):
    """Channel concatenation (torch ``dim=1``) of tensors that agree in every other dimension.
    In fixed point each input is aligned to the output's format and saturated."""

    op = "concat"
    arity = None

    def infer_all(self, shapes):
        if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise FxpgaError(
                f"{self.where()}: concat needs inputs that differ only in channels, got "
                f"{', '.join(str(s) for s in shapes)}"
            )
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def float_forward(self, *xs):
        return torch.cat(xs, dim=1)


OPS = {
    cls.op: cls
    for cls in (Conv, Linear, BatchNorm, ReLU, Clip, Pad, MaxPool, AvgPool, Flatten, Add, Concat)
}


HOST_OPS = ("softmax", "log_softmax", "sigmoid")  # monotone last ops the host applies


@dataclass
class Graph:
    """Nodes in topological order fed by one input of per-sample shape ``input_shape``; the
    last node is the output, and every other node must feed a later one.

    ``host_tail``: what the model applied after its last node (``softmax``, ``log_softmax``,
    ``sigmoid``: monotone, so the argmax is the same). The integer network ends before it,
    and the host applies it in float where it wants probabilities.
    """

    input_shape: Shape
    nodes: list[Node]
    host_tail: tuple[str, ...] = ()

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.infer_shapes()

    def infer_shapes(self):
        shapes = {INPUT: self.input_shape}
        prev = INPUT
        for n in self.nodes:
            if n.name in shapes:
                what = "the graph input's name" if n.name == INPUT else "a duplicate layer name"
                raise FxpgaError(f"{n.where()}: '{n.name}' is {what}")
            n.inputs = tuple(n.inputs) or (prev,)
            for i in n.inputs:
                if i not in shapes:
                    raise FxpgaError(
                        f"{n.where()}: its input '{i}' is not the graph input or an earlier layer"
                    )
            if n.arity is not None and len(n.inputs) != n.arity:
                raise FxpgaError(f"{n.where()}: {n.op} takes one input, got {len(n.inputs)}")
            if n.arity is None and len(n.inputs) < 2:
                raise FxpgaError(f"{n.where()}: {n.op} takes two or more inputs")
            n.in_shape = shapes[n.inputs[0]]
            n.out_shape = tuple(int(d) for d in n.infer_all([shapes[i] for i in n.inputs]))
            shapes[n.name] = n.out_shape
            prev = n.name
        used = {i for n in self.nodes for i in n.inputs}
        for n in self.nodes[:-1]:
            if n.name not in used:
                raise FxpgaError(f"{n.where()}: its output is used by no later layer")

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape if self.nodes else self.input_shape

    @property
    def is_chain(self) -> bool:
        """Each node reads only the one before it (the graph input for the first)."""
        prev = INPUT
        for n in self.nodes:
            if n.inputs != (prev,):
                return False
            prev = n.name
        return True

    def consumers(self) -> dict[str, list[Node]]:
        """Tensor name → the nodes reading it, in order (the input and every node)."""
        out: dict[str, list[Node]] = {INPUT: []} | {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                out[i].append(n)
        return out

    def macs(self) -> int:
        """Multiply-accumulates of one inference: every conv and linear weight times the
        output positions it is used at."""
        total = 0
        for n in self.weighted():
            positions = int(np.prod(n.out_shape[1:])) if isinstance(n, Conv) else 1
            total += n.weight.size * positions
        return total

    def last_use(self) -> dict[int, list[str]]:
        """Node index → the tensors it is the last reader of (the output is never freed)."""
        last = {i: k for k, n in enumerate(self.nodes) for i in n.inputs}
        out: dict[int, list[str]] = {}
        for name, k in last.items():
            out.setdefault(k, []).append(name)
        return out

    def shape_of(self, name: str) -> Shape:
        return self.input_shape if name == INPUT else self[name].out_shape

    def __getitem__(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def weighted(self) -> list[Node]:
        return [n for n in self.nodes if n.has_weights]

    def forward_from(self, start: int, env: dict[str, torch.Tensor]) -> np.ndarray:
        """Float64 reference of ``nodes[start:]`` alone: ``env`` gives every tensor they read
        that an earlier node makes (or the input). Returns the output."""
        env = dict(env)
        last_use = self.last_use()
        with torch.no_grad():
            for k, n in enumerate(self.nodes[start:], start):
                env[n.name] = n.float_forward(*(env[j] for j in n.inputs))
                for j in last_use.get(k, ()):
                    del env[j]
        return env[self.nodes[-1].name].numpy()

    def float_forward(self, x, keep: bool = False, batch: int = 1024):
        """Float64 reference on ``x`` (N, *input_shape).

        Returns the output, or with ``keep`` a dict of every node's output by name.
        """
        x = np.asarray(x)
        last_use = self.last_use()
        outs: dict[str, list] = {n.name: [] for n in self.nodes}
        final = []
        with torch.no_grad():
            for i in range(0, max(len(x), 1), batch):
                env = {INPUT: torch.from_numpy(np.ascontiguousarray(x[i : i + batch], np.float64))}
                for k, n in enumerate(self.nodes):
                    t = env[n.name] = n.float_forward(*(env[j] for j in n.inputs))
                    if keep:
                        outs[n.name].append(t.numpy())
                    for j in last_use.get(k, ()):
                        del env[j]
                final.append(t.numpy())
        if keep:
            return {k: np.concatenate(v) for k, v in outs.items()}
        return np.concatenate(final)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every BatchNorm into the conv/linear that feeds it ("streaming slimming").

    ``w' = w · γ/√(σ²+ε)`` per output channel, ``b' = (b − μ) · γ/√(σ²+ε) + β``. The conv keeps
    its name and the BatchNorm's readers read it; its output must feed nothing else.
    """
    nodes: list[Node] = []
    by_name = {n.name: n for n in graph.nodes}
    readers = graph.consumers()
    renamed: dict[str, str] = {}
    for n in graph.nodes:
        n.inputs = tuple(renamed.get(i, i) for i in n.inputs)
        if isinstance(n, BatchNorm):
            prev = by_name.get(n.inputs[0])
            if not isinstance(prev, Conv | Linear):
                what = f"'{prev.name}' ({prev.op})" if prev else "the input"
                raise FxpgaError(
                    f"{n.where()}: BatchNorm can only be folded into a Conv2d or "
                    f"Linear directly before it, but it follows {what}"
                )
            if len(readers[prev.name]) != 1:
                raise FxpgaError(
                    f"{n.where()}: BatchNorm can only be folded into '{prev.name}' if nothing "
                    f"else reads that layer's output, but {len(readers[prev.name])} layers do"
                )
            shape = (-1,) + (1,) * (prev.weight.ndim - 1)
            prev.weight = prev.weight * n.scale.reshape(shape)
            prev.bias = prev.bias * n.scale + n.shift
            renamed[n.name] = prev.name
            continue
        nodes.append(n)
    return Graph(graph.input_shape, nodes, graph.host_tail)
