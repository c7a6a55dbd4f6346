"""ONNX → graph IR: the frontend for models exported from PyTorch, TensorFlow (tf2onnx) or Keras.

The walk visits the graph's nodes in their (topological) order, after dropping those the
output does not depend on. Three kinds of node:

- constant computation (``Constant``, the shape arithmetic exporters leave behind, such as
  ``Shape → Gather → Unsqueeze → Concat`` feeding a ``Reshape``): evaluated with numpy
  (``_FOLD``); the input's shape is known, so ``Shape`` is a constant too;
- layers: each op type has a converter registered with ``@converts(...)`` that returns the
  IR value its output carries (``_Value``), emitting IR nodes on the way or none (``Dropout``,
  ``Identity``: the input's value);
- anything else: an error naming the node, its op type and what is supported.

Weights come from initializers (or constants) as float64. BatchNorm is an IR node folded away
afterwards (``ir.fold_batchnorm``), as in ``frontend.graph_from_fx``.

TensorFlow exports flatten in NHWC order: ``Transpose(perm=[0, 2, 3, 1])`` then a
``Reshape``/``Flatten`` to (N, H·W·C). When that flattened tensor feeds a ``Gemm``/``MatMul``
the importer permutes the weight's columns from HWC to CHW order, so an ``ir.Flatten`` (CHW)
and an ``ir.Linear`` compute the same function exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import FxpgaError
from ..limits import MAX_WEIGHTS
from . import ir
from .frontend import MAX_PAD, check_input_shape, check_sizes

SUPPORTED = (
    "Conv (any group; dilation 1; pads, auto_pad), Gemm (transA=0), MatMul (+ Add of a "
    "constant bias), Relu, Clip, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, "
    "ReduceMean over H and W, BatchNormalization after a Conv/Gemm/MatMul, Pad (zeros on H and "
    "W), Flatten and Reshape to (N, -1), Transpose(perm=[0, 2, 3, 1]) flattened into a "
    "Gemm/MatMul, Add/Sum of tensors of one shape, Concat on axis 1, Dropout, Identity; "
    "Softmax/LogSoftmax/Sigmoid as the last op (applied by the host); Constant, Shape, and "
    "shape arithmetic on constants (Cast, Concat, ConstantOfShape, Gather, Reshape, Slice, "
    "Squeeze, Transpose, Unsqueeze, Add, Sub, Mul, Div, Neg)"
)

# an ONNX file holding more than MAX_WEIGHTS float64 weights is refused before it is parsed
_MAX_FILE_BYTES = 8 * MAX_WEIGHTS + (64 << 20)
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}
# opset 1's Pad names its attribute `paddings`; from opset 2 on each op's form is read by its
# converter (Pad, Clip, MaxPool, Softmax change), and before opset 7 an Add/Sub/Mul/Div with a
# broadcast `axis` is refused. The newest is the installed onnx package's, against which its
# checker validates the model.
MIN_OPSET = 2
MAX_OPSET = onnx.defs.onnx_opset_version()
_DEFAULT_DOMAIN = ("", "ai.onnx")
_UNBOUNDED = 3.4e38  # Clip before opset 11 defaults to ±FLT_MAX: no bound


@dataclass(frozen=True)
class _Value:
    """What an ONNX tensor computed from the input is in the IR.

    ``ir``: the IR tensor it reads (a layer name or ``ir.INPUT``); ``shape``: its per-sample
    shape as ONNX sees it. ``layout`` is ``""``, or ``"nhwc"`` for ``ir`` transposed by
    ``perm=[0, 2, 3, 1]`` (``shape`` (H, W, C)), or ``"hwc_flat"`` for that flattened
    (``shape`` (H·W·C,)), which only a Gemm/MatMul may read; ``chw`` is then ``ir``'s shape
    and ``flat`` the (name, source) of the flatten. ``host``: the monotone ops the host
    applies after it (softmax and the like), which only more of those may follow.
    """

    ir: str
    shape: tuple[int, ...]
    layout: str = ""
    chw: tuple[int, ...] = ()
    flat: tuple[str, str] | None = None
    host: tuple[str, ...] = ()


_CONVERTERS: dict[str, Callable] = {}
_FOLD: dict[str, Callable] = {}


def _registers(table: dict[str, Callable]):
    def decorator(*op_types):
        def register(fn):
            for t in op_types:
                table[t] = fn
            return fn

        return register

    return decorator


converts = _registers(_CONVERTERS)  # the converter of a layer's op types
folds = _registers(_FOLD)  # a numpy evaluation of op types whose inputs are all constant


def _attr_value(a: onnx.AttributeProto):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return [x.decode(errors="replace") if isinstance(x, bytes) else x for x in v]
    return v


class _Ctx:
    """What a converter sees: the ONNX node, its inputs as constants or IR values, and the
    importer it emits IR nodes into."""

    def __init__(self, imp: _Importer, node: onnx.NodeProto, name: str):
        self.imp, self.node, self.name = imp, node, name
        self.op = node.op_type
        self.source = f"{imp.path.name}: {node.op_type}"
        self.attrs = {a.name: _attr_value(a) for a in node.attribute}

    @property
    def opset(self) -> int:
        return self.imp.opset

    def where(self) -> str:
        return f"{self.imp.path}: node '{self.node.name or self.name}' ({self.op})"

    def fail(self, why: str):
        raise FxpgaError(f"{self.where()}: {why}")

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def is_const(self, i: int) -> bool:
        return self.has(i) and self.node.input[i] in self.imp.const

    def const(self, i: int, what: str = "input") -> np.ndarray:
        """Input ``i`` as a constant (an initializer, a Constant or folded shape arithmetic)."""
        name = self.node.input[i] if self.has(i) else ""
        if name not in self.imp.const:
            self.fail(f"its {what} '{name}' must be a constant, but it is computed from the input")
        return self.imp.const[name]

    def ints(self, i: int, what: str) -> list[int]:
        return [int(v) for v in np.asarray(self.const(i, what)).reshape(-1)]

    def weight(self, i: int, what: str) -> np.ndarray:
        """A constant input as float64, checked finite."""
        w = np.asarray(self.const(i, what), dtype=np.float64)
        if not np.all(np.isfinite(w)):
            bad = int(w.size - np.count_nonzero(np.isfinite(w)))
            self.fail(f"its {what} has {bad} non-finite value(s) (NaN or inf)")
        return w

    def value(self, i: int = 0, layouts: tuple[str, ...] = ("",), host_ok=False) -> _Value:
        """Input ``i`` as an IR value, in one of ``layouts`` (plain by default)."""
        if not self.has(i):
            self.fail(f"input #{i} is missing")
        name = self.node.input[i]
        v = self.imp.values.get(name)
        if v is None:
            if name in self.imp.const:
                self.fail(
                    f"its input '{name}' is a constant where a tensor computed from the model's "
                    f"input is expected; only constant weights and shapes are supported"
                )
            self.fail(f"its input '{name}' is not produced by an earlier node")
        if v.host and not host_ok:
            h = v.host[0]
            self.fail(
                f"follows a {h}: {h} is supported only as the last op (the host applies it "
                f"in float)"
            )
        if v.layout not in layouts:
            if v.layout == "nhwc":
                self.fail(
                    "reads a Transpose(perm=[0, 2, 3, 1]) output: that transpose is supported "
                    "only right before a Flatten/Reshape to (N, -1) that feeds a Gemm/MatMul"
                )
            self.fail(
                "reads an NHWC-order flatten (Transpose(perm=[0, 2, 3, 1]) + Flatten/Reshape): "
                "that is supported only as the input of a Gemm/MatMul"
            )
        return v

    def chw(self, i: int = 0) -> _Value:
        v = self.value(i)
        if len(v.shape) != 3:
            self.fail(f"needs an (N, C, H, W) input, got (N, {', '.join(map(str, v.shape))})")
        return v

    def emit(self, cls, *inputs: _Value, suffix: str = "", **kw) -> _Value:
        """Append an IR node reading ``inputs``; its name is the ONNX node's (+ ``suffix``)."""
        name = self.imp.unique(f"{self.name}_{suffix}") if suffix else self.name
        node = cls(name, source=self.source, inputs=tuple(v.ir for v in inputs), **kw)
        return self.imp.emit(node, [v.shape for v in inputs])

    def window_pads(self, hw, kernel, strides) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) from ``pads`` or ``auto_pad`` (dilation 1)."""
        auto = self.attr("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            before, after = [], []
            for size, k, s in zip(hw, kernel, strides, strict=True):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                small, large = total // 2, total - total // 2
                before.append(small if auto == "SAME_UPPER" else large)
                after.append(large if auto == "SAME_UPPER" else small)
            return (*before, *after)
        if auto == "VALID":
            return (0, 0, 0, 0)
        if auto != "NOTSET":
            self.fail(f"auto_pad '{auto}' is not an ONNX auto_pad value")
        pads = tuple(int(p) for p in self.attr("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            self.fail(f"pads {list(pads)}: expected 4 values for 2-D [top, left, bottom, right]")
        if min(pads) < 0:
            self.fail(f"negative pads {list(pads)} are not supported")
        return pads

    def dilation_one(self):
        dil = [int(d) for d in self.attr("dilations", (1, 1))]
        if any(d != 1 for d in dil):
            self.fail(f"dilations {dil} are not supported (dilation 1 only)")

    def linear(self, x: _Value, w: np.ndarray, b: np.ndarray) -> _Value:
        """An ``ir.Linear`` on ``x``; an NHWC-order flatten becomes an ``ir.Flatten`` and the
        weight's columns are permuted from HWC to CHW order."""
        hwc = x.chw if x.layout == "hwc_flat" else None
        if hwc:
            x = self.imp.flatten_chw(x)
        if len(x.shape) != 1:
            self.fail(
                f"needs an (N, features) input, got (N, {', '.join(map(str, x.shape))}); "
                f"flatten it first"
            )
        if x.shape[0] != w.shape[1]:
            self.fail(f"its weight takes {w.shape[1]} features, the input has {x.shape[0]}")
        if hwc:
            c, h, wd = hwc
            w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
        out = self.emit(ir.Linear, x, weight=w, bias=b)
        self.imp.biasable[self.node.output[0]] = self.imp.nodes[-1]
        return out


class _Importer:
    def __init__(self, model: onnx.ModelProto, path: Path):
        self.model, self.path, self.graph = model, path, model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.const: dict[str, np.ndarray] = {
            t.name: self.initializer(t) for t in self.graph.initializer
        }
        self.values: dict[str, _Value] = {}
        self.nodes: list[ir.Node] = []
        self.used: set[str] = {ir.INPUT}
        # ONNX tensor → the Conv/Linear computing it, whose bias an Add of a constant may take
        self.biasable: dict[str, ir.Node] = {}
        self.flattened: dict[str, _Value] = {}  # NHWC flatten → its emitted ir.Flatten
        self.batch = 1

    def fail(self, why: str):
        raise FxpgaError(f"{self.path}: {why}")

    def initializer(self, t: onnx.TensorProto) -> np.ndarray:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            self.fail(f"initializer '{t.name}' is stored in an external file; fxpga reads one file")
        try:
            return numpy_helper.to_array(t)
        except Exception as e:
            why = f"unknown data type {t.data_type}" if isinstance(e, KeyError) else _first_line(e)
            self.fail(f"initializer '{t.name}' cannot be read: {why}")

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def emit(self, node: ir.Node, shapes: list[tuple[int, ...]]) -> _Value:
        node.in_shape = shapes[0]
        node.out_shape = tuple(int(d) for d in node.infer_all(shapes))
        self.nodes.append(node)
        self.used.add(node.name)
        return _Value(node.name, node.out_shape)

    def flatten_chw(self, x: _Value) -> _Value:
        """The ``ir.Flatten`` standing for an NHWC-order flatten (emitted once)."""
        if x.flat[0] not in self.flattened:
            name, source = x.flat
            node = ir.Flatten(name, source=source, inputs=(x.ir,))
            self.flattened[x.flat[0]] = self.emit(node, [x.chw])
        return self.flattened[x.flat[0]]

    # ---- the input ---------------------------------------------------------------------------

    def input_value(self, input_shape) -> _Value:
        """The graph's one input (not an initializer) with its per-sample shape."""
        inputs = [i for i in self.graph.input if i.name not in self.const]
        if len(inputs) != 1:
            self.fail(
                f"the model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                f"one is supported"
            )
        inp = inputs[0]
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if tt is None:
            self.fail(f"input '{inp.name}' is not a tensor")
        if tt.elem_type not in _FLOAT_TYPES:
            kind = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
            self.fail(f"input '{inp.name}' holds {kind} values; a float tensor is expected")
        dims = None
        if tt.HasField("shape"):
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tt.shape.dim
            ]
        static = dims is not None and all(isinstance(d, int) and d > 0 for d in dims[1:])
        if dims is not None and len(dims) < 2:
            self.fail(
                f"input '{inp.name}' has shape {dims}; expected (N, features) or (N, C, H, W)"
            )
        if input_shape is None:
            if not static:
                shown = "unknown" if dims is None else str(dims)
                form = "F" if dims is not None and len(dims) == 2 else "C,H,W"
                self.fail(
                    f"input '{inp.name}' has dynamic shape {shown}; give the per-sample shape "
                    f"with --input-shape {form}"
                )
            shape = check_input_shape(dims[1:], f"{self.path}: input '{inp.name}'")
        else:
            shape = check_input_shape(input_shape, f"{self.path}: --input-shape")
            if dims is not None and (
                len(dims) != len(shape) + 1
                or any(
                    isinstance(d, int) and d > 0 and d != s
                    for d, s in zip(dims[1:], shape, strict=False)
                )
            ):
                self.fail(
                    f"input '{inp.name}' has shape {dims}; the per-sample shape "
                    f"{','.join(map(str, shape))} given does not fit it"
                )
        if dims is not None and isinstance(dims[0], int) and dims[0] > 0:
            self.batch = dims[0]
        self.input_shape = shape
        self.values[inp.name] = _Value(ir.INPUT, shape)
        return self.values[inp.name]

    # ---- the walk ----------------------------------------------------------------------------

    def needed_nodes(self) -> list[tuple[int, onnx.NodeProto]]:
        """The nodes the graph's output depends on, in order, numbered as in the file."""
        if len(self.graph.output) != 1:
            self.fail(f"the model has {len(self.graph.output)} outputs; one is supported")
        needed = {self.graph.output[0].name}
        keep = []
        for k in range(len(self.graph.node) - 1, -1, -1):
            n = self.graph.node[k]
            if any(o in needed for o in n.output if o):
                keep.append((k, n))
                needed.update(i for i in n.input if i)
        return keep[::-1]

    def run(self, input_shape) -> ir.Graph:
        self.input_value(input_shape)
        nodes = self.needed_nodes()
        self.uses = Counter(i for _, n in nodes for i in n.input if i)
        self.uses.update(o.name for o in self.graph.output)
        for k, n in nodes:
            self.visit(k, n)
        return self.finish()

    def visit(self, k: int, node: onnx.NodeProto):
        ctx = _Ctx(self, node, self.unique(node.name or f"{node.op_type}_{k}"))
        if node.domain not in ("", "ai.onnx"):
            ctx.fail(f"op from domain '{node.domain}' is not supported; supported are {SUPPORTED}")
        if (
            self.opset < 7
            and node.op_type in ("Add", "Sub", "Mul", "Div")
            and any(a.name == "axis" for a in node.attribute)
        ):
            ctx.fail("broadcasting along an 'axis' (before opset 7) is not supported")
        present = [i for i in node.input if i]
        if node.op_type in _FOLD and all(i in self.const for i in present):
            args = [self.const[i] if i else None for i in node.input]
            try:
                outs = _FOLD[node.op_type](ctx, *args)
            except FxpgaError:
                raise
            except Exception as e:
                ctx.fail(f"cannot evaluate it on its constant inputs: {_first_line(e)}")
            for o, v in zip(node.output, outs, strict=False):
                self.const[o] = np.asarray(v)
            return
        convert = _CONVERTERS.get(node.op_type)
        if convert is None:
            ctx.fail(f"unsupported ONNX op; supported are {SUPPORTED}")
        out = convert(ctx)
        if isinstance(out, np.ndarray):
            self.const[node.output[0]] = out
        else:
            self.values[node.output[0]] = out
        for j, o in enumerate(node.output[1:], 1):
            if o and self.uses[o]:
                ctx.fail(f"its output #{j} '{o}' is read; only the first output is supported")

    def finish(self) -> ir.Graph:
        name = self.graph.output[0].name
        out = self.values.get(name)
        if out is None:
            self.fail(f"the model's output '{name}' does not depend on its input")
        if out.layout:
            self.fail(
                f"the model's output '{name}' is an NHWC transpose or flatten, which is "
                f"supported only as the input of a Gemm/MatMul"
            )
        # drop layers that only shape arithmetic read (a Shape of them): the output is the
        # last layer kept, the nodes being in topological order
        live, kept = {out.ir}, []
        for n in reversed(self.nodes):
            if n.name in live:
                kept.append(n)
                live.update(n.inputs)
        if not kept:
            self.fail("the model has no supported layers")
        graph = ir.Graph(self.input_shape, kept[::-1], out.host)
        graph = ir.fold_batchnorm(graph)
        check_sizes(graph)
        return graph


# ---- constant folding ------------------------------------------------------------------------


def _axes(ctx: _Ctx, i: int, args) -> list[int] | None:
    """``axes`` from the attribute (before opset 13/18) or input ``i``."""
    if "axes" in ctx.attrs:
        return [int(a) for a in ctx.attrs["axes"]]
    if len(args) > i and args[i] is not None:
        return [int(a) for a in np.asarray(args[i]).reshape(-1)]
    return None


@folds("Constant")
def _k_constant(ctx):
    a = ctx.attrs
    if "value" in a:
        return [numpy_helper.to_array(a["value"])]
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in a:
            return [np.array(a[key], dtype=dtype)]
    ctx.fail(f"a Constant with {', '.join(a) or 'no value'} is not supported (numbers only)")


@folds("ConstantOfShape")
def _k_constant_of_shape(ctx, shape):
    v = ctx.attr("value")
    fill = numpy_helper.to_array(v).reshape(-1) if v is not None else np.zeros(1, np.float32)
    return [np.full([int(d) for d in shape], fill[0], dtype=fill.dtype)]


@folds("Identity")
def _k_identity(ctx, x):
    return [x]


@folds("Cast")
def _k_cast(ctx, x):
    return [np.asarray(x).astype(onnx.helper.tensor_dtype_to_np_dtype(ctx.attr("to")))]


@folds("Concat")
def _k_concat(ctx, *xs):
    return [np.concatenate([np.atleast_1d(x) for x in xs if x is not None], axis=ctx.attr("axis"))]


@folds("Reshape")
def _k_reshape(ctx, x, shape, *_):
    shape = [int(d) for d in shape]
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[j] if d == 0 else d for j, d in enumerate(shape)]
    return [np.reshape(x, shape)]


@folds("Transpose")
def _k_transpose(ctx, x):
    return [np.transpose(x, ctx.attr("perm"))]


@folds("Gather")
def _k_gather(ctx, x, idx):
    return [np.take(x, np.asarray(idx, dtype=np.int64), axis=ctx.attr("axis", 0))]


@folds("Unsqueeze")
def _k_unsqueeze(ctx, x, *args):
    axes = _axes(ctx, 0, args) or []
    rank = np.ndim(x) + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return [x]


@folds("Squeeze")
def _k_squeeze(ctx, x, *args):
    axes = _axes(ctx, 0, args)
    return [np.squeeze(x, axis=None if axes is None else tuple(axes))]


@folds("Slice")
def _k_slice(ctx, x, *args):
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes, steps = ctx.attr("axes"), None
    else:
        starts, ends = (np.asarray(a).reshape(-1).tolist() for a in args[:2])
        axes = (
            np.asarray(args[2]).reshape(-1).tolist()
            if len(args) > 2 and args[2] is not None
            else None
        )
        steps = (
            np.asarray(args[3]).reshape(-1).tolist()
            if len(args) > 3 and args[3] is not None
            else None
        )
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * np.ndim(x)
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        index[int(a)] = slice(int(s), int(e), int(st))
    return [np.asarray(x)[tuple(index)]]


_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Neg": np.negative}


@folds(*_ARITH)
def _k_arith(ctx, *xs):
    return [_ARITH[ctx.op](*xs)]


@folds("Div")
def _k_div(ctx, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return [np.trunc(a / b).astype(np.result_type(a, b))]
    return [a / b]


# ---- layers ----------------------------------------------------------------------------------


@converts("Shape")
def _shape(ctx):
    """The shape of a tensor computed from the input: a constant, with the batch dimension as
    exported (1 where it is symbolic: a reshape's batch dimension is checked as such)."""
    v = ctx.value(0, layouts=("", "nhwc", "hwc_flat"))
    shape = np.array([ctx.imp.batch, *v.shape], dtype=np.int64)
    return shape[ctx.attr("start", 0) : ctx.attr("end", len(shape))]


@converts("Identity", "Dropout")
def _drop(ctx):
    if ctx.op == "Dropout" and ctx.is_const(2) and bool(np.asarray(ctx.const(2)).reshape(-1)[0]):
        ctx.fail("training_mode=True is not supported; export the model in inference mode")
    return ctx.value(0, layouts=("", "nhwc", "hwc_flat"), host_ok=True)


@converts("Conv")
def _conv(ctx):
    x = ctx.chw(0)
    w = ctx.weight(1, "weight")
    if w.ndim != 4:
        ctx.fail(f"only 2-D convolution is supported (a 4-D weight); this weight is {w.shape}")
    b = ctx.weight(2, "bias") if ctx.has(2) else np.zeros(w.shape[0])
    if b.shape != (w.shape[0],):
        ctx.fail(f"bias of shape {b.shape} for {w.shape[0]} output channels")
    ctx.dilation_one()
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape", w.shape[2:]))
    if kernel != w.shape[2:]:
        ctx.fail(f"kernel_shape {list(kernel)} does not match the weight's {w.shape}")
    strides = tuple(int(s) for s in ctx.attr("strides", (1, 1)))
    top, left, bottom, right = ctx.window_pads(x.shape[1:], kernel, strides)
    padding = (top, left)
    if (top, left) != (bottom, right):
        x = ctx.emit(ir.Pad, x, suffix="pad", pads=(left, right, top, bottom))
        padding = (0, 0)
    out = ctx.emit(
        ir.Conv,
        x,
        weight=w,
        bias=b,
        stride=strides,
        padding=padding,
        groups=int(ctx.attr("group", 1)),
    )
    ctx.imp.biasable[ctx.node.output[0]] = ctx.imp.nodes[-1]
    return out


@converts("Gemm")
def _gemm(ctx):
    """``alpha · A·B' + beta · C`` with ``B' = B`` or ``Bᵀ`` (transB): a Linear of weight
    ``alpha · B'ᵀ`` and bias ``beta · C``."""
    if ctx.attr("transA", 0):
        ctx.fail("transA=1 is not supported (the input must be (N, features))")
    x = ctx.value(0, layouts=("", "hwc_flat"))
    b = ctx.weight(1, "weight B")
    if b.ndim != 2:
        ctx.fail(f"weight B must be 2-D, it is {b.shape}")
    w = float(ctx.attr("alpha", 1.0)) * (b if ctx.attr("transB", 0) else b.T)
    bias = np.zeros(w.shape[0])
    if ctx.has(2):
        bias = float(ctx.attr("beta", 1.0)) * _bias_vector(ctx, ctx.weight(2, "bias C"), w.shape[0])
    return ctx.linear(x, w, bias)


def _bias_vector(ctx, c: np.ndarray, outputs: int, spatial: bool = False) -> np.ndarray:
    """A constant added to an (N, outputs) or (N, outputs, H, W) tensor (``spatial``) that is
    one value per output, or one for all, broadcast the ONNX way: as an (outputs,) bias."""
    rank = 4 if spatial else 2
    shape = (1,) * (rank - c.ndim) + c.shape
    if (
        c.ndim > rank
        or shape[0] != 1
        or shape[1] not in (1, outputs)
        or max(shape[2:], default=1) != 1
    ):
        ctx.fail(f"constant of shape {list(c.shape)} is not one value per output (of {outputs})")
    return np.broadcast_to(c.reshape(-1), (outputs,)).astype(np.float64)


@converts("MatMul")
def _matmul(ctx):
    x = ctx.value(0, layouts=("", "hwc_flat"))
    b = ctx.weight(1, "weight B")
    if b.ndim != 2:
        ctx.fail(f"weight B must be 2-D, it is {b.shape}")
    return ctx.linear(x, b.T, np.zeros(b.shape[1]))


@converts("Add", "Sum")
def _add(ctx):
    """Tensors of one shape: ``ir.Add``. A constant added to a Conv/Gemm/MatMul output that
    nothing else reads, one value per output channel: folded into that layer's bias."""
    consts = [i for i in range(len(ctx.node.input)) if ctx.is_const(i)]
    if ctx.op == "Add" and len(consts) == 1:
        c = np.asarray(ctx.weight(consts[0], "addend"))
        j = 1 - consts[0]
        x = ctx.value(j)
        layer = ctx.imp.biasable.pop(ctx.node.input[j], None)
        if layer is None or ctx.imp.uses[ctx.node.input[j]] != 1:
            ctx.fail(
                "adds a constant to a tensor: supported only as the bias of the Conv, Gemm "
                "or MatMul right before it, whose output nothing else reads"
            )
        layer.bias = layer.bias + _bias_vector(
            ctx, c, layer.weight.shape[0], spatial=isinstance(layer, ir.Conv)
        )
        ctx.imp.biasable[ctx.node.output[0]] = layer
        return x
    if consts:
        ctx.fail("adds constants to tensors: only the bias after a Conv/Gemm/MatMul is supported")
    xs = [ctx.value(i) for i in range(len(ctx.node.input))]
    if len(xs) == 1:
        return xs[0]
    if any(x.shape != xs[0].shape for x in xs):
        shown = ", ".join("(N, " + ", ".join(map(str, x.shape)) + ")" for x in xs)
        ctx.fail(f"adds tensors of shapes {shown}; supported is one shape (no broadcasting)")
    return ctx.emit(ir.Add, *xs)


@converts("Concat")
def _concat(ctx):
    xs = [ctx.value(i) for i in range(len(ctx.node.input))]
    rank = len(xs[0].shape) + 1
    axis = int(ctx.attr("axis", 1))
    if axis % rank != 1:
        ctx.fail(f"axis {axis} is not supported (the channel axis 1 only)")
    if len(xs) == 1:
        return xs[0]
    if any(len(x.shape) != len(xs[0].shape) or x.shape[1:] != xs[0].shape[1:] for x in xs):
        shown = ", ".join("(N, " + ", ".join(map(str, x.shape)) + ")" for x in xs)
        ctx.fail(f"concatenates tensors of shapes {shown}; they must differ in channels only")
    return ctx.emit(ir.Concat, *xs)


@converts("Relu")
def _relu(ctx):
    return ctx.emit(ir.ReLU, ctx.value(0))


@converts("Clip")
def _clip(ctx):
    """``clamp(x, min, max)`` (attributes before opset 11, inputs from it): ReLU6 and the like;
    (0, unbounded) is a ReLU, no bounds at all nothing."""
    x = ctx.value(0)
    if ctx.opset < 11:
        bounds = [ctx.attr("min"), ctx.attr("max")]
    else:
        bounds = [
            float(np.asarray(ctx.const(i, what)).reshape(-1)[0]) if ctx.has(i) else None
            for i, what in ((1, "min"), (2, "max"))
        ]
    lo, hi = (None if b is None or abs(float(b)) >= _UNBOUNDED else float(b) for b in bounds)
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None and lo >= hi:
        ctx.fail(f"clip to [{lo}, {hi}] is empty or a constant")
    if lo == 0.0 and hi is None:
        return ctx.emit(ir.ReLU, x)
    return ctx.emit(ir.Clip, x, lo=lo, hi=hi)


def _pool(ctx, cls):
    x = ctx.chw(0)
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape", ()))
    if len(kernel) != 2:
        ctx.fail(f"kernel_shape {list(kernel)}: only 2-D pooling is supported")
    ctx.dilation_one()
    strides = tuple(int(s) for s in ctx.attr("strides", (1, 1)))
    top, left, bottom, right = pads = ctx.window_pads(x.shape[1:], kernel, strides)
    if (top, left) != (bottom, right):
        ctx.fail(f"pads {list(pads)} are asymmetric; pooling supports symmetric padding only")
    if cls is ir.AvgPool and any(pads) and not ctx.attr("count_include_pad", 0):
        ctx.fail(
            f"count_include_pad=0 with pads {list(pads)} is not supported (the average counts "
            f"the padding zeros: count_include_pad=1)"
        )
    if ctx.attr("ceil_mode", 0):
        spans = (x.shape[1] + 2 * top - kernel[0], x.shape[2] + 2 * left - kernel[1])
        if any(span % s for span, s in zip(spans, strides, strict=True)):
            ctx.fail("ceil_mode=1 is not supported where it adds a window (floor mode only)")
    return ctx.emit(cls, x, kernel=kernel, stride=strides, padding=(top, left))


@converts("MaxPool")
def _maxpool(ctx):
    return _pool(ctx, ir.MaxPool)


@converts("AveragePool")
def _avgpool(ctx):
    return _pool(ctx, ir.AvgPool)


@converts("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx):
    x = ctx.chw(0)
    k = x.shape[1:]
    cls = ir.AvgPool if ctx.op == "GlobalAveragePool" else ir.MaxPool
    return ctx.emit(cls, x, kernel=k, stride=k, padding=(0, 0))


@converts("ReduceMean")
def _reduce_mean(ctx):
    """The mean over H and W: global average pooling, then a flatten unless ``keepdims``."""
    x = ctx.chw(0)
    axes = ctx.attr("axes")
    if axes is None and ctx.has(1):
        axes = ctx.ints(1, "axes")
    if sorted(int(a) % 4 for a in axes or ()) != [2, 3]:
        ctx.fail(f"mean over axes {axes}: supported only over H and W (axes [2, 3])")
    k = x.shape[1:]
    out = ctx.emit(ir.AvgPool, x, kernel=k, stride=k, padding=(0, 0))
    if ctx.attr("keepdims", 1):
        return out
    return ctx.emit(ir.Flatten, out, suffix="flatten")


@converts("BatchNormalization")
def _batchnorm(ctx):
    if ctx.attr("training_mode", 0):
        ctx.fail("training_mode=1 is not supported; export the model in inference mode")
    x = ctx.value(0)
    gamma, beta, mean, var = (
        ctx.weight(i, what) for i, what in enumerate(("scale", "bias", "mean", "var"), 1)
    )
    if any(a.shape != (x.shape[0],) for a in (gamma, beta, mean, var)):
        ctx.fail(f"its parameters must each hold {x.shape[0]} values, one per channel")
    scale = gamma / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
    return ctx.emit(ir.BatchNorm, x, scale=scale, shift=beta - mean * scale)


@converts("Pad")
def _pad(ctx):
    """Zero padding of H and W: ``pads`` [x1_begin, x2_begin, …, x1_end, x2_end, …]."""
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        ctx.fail(f"mode '{mode}' is not supported (constant zero padding only)")
    x = ctx.chw(0)
    if ctx.opset < 11:
        pads, value = [int(p) for p in ctx.attr("pads", ())], float(ctx.attr("value", 0.0))
        axes = None
    else:
        pads = ctx.ints(1, "pads")
        value = np.asarray(ctx.const(2, "constant_value")) if ctx.has(2) else np.zeros(1)
        value = float(value.reshape(-1)[0]) if value.size else 0.0
        axes = ctx.ints(3, "axes") if ctx.has(3) else None
    if value != 0.0:
        ctx.fail(f"constant value {value} is not supported (zero padding only)")
    if axes is not None:
        full = [0] * 8
        if len(pads) != 2 * len(axes):
            ctx.fail(f"pads {pads} do not match axes {axes}")
        for j, a in enumerate(axes):
            full[a % 4], full[a % 4 + 4] = pads[j], pads[j + len(axes)]
        pads = full
    if len(pads) != 8:
        ctx.fail(f"pads {pads}: expected 8 values for an (N, C, H, W) tensor")
    if pads[0] or pads[1] or pads[4] or pads[5]:
        ctx.fail(f"pads {pads} pad the batch or channel axis; only H and W are supported")
    top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
    if not all(0 <= p <= MAX_PAD for p in (top, left, bottom, right)):
        ctx.fail(f"pads {pads}: supported are 0..{MAX_PAD} on H and W (no cropping)")
    if not any(pads):
        return x
    return ctx.emit(ir.Pad, x, pads=(left, right, top, bottom))


def _flat(ctx, x: _Value) -> _Value:
    """(N, ...) → (N, prod(...)): an ``ir.Flatten``; of an NHWC transpose, a pending flatten
    that the Gemm/MatMul reading it turns into an ``ir.Flatten`` and permuted weights."""
    if x.layout == "nhwc":
        return replace(
            x, layout="hwc_flat", shape=(math.prod(x.shape),), flat=(ctx.name, ctx.source)
        )
    if len(x.shape) == 1:
        return x
    return ctx.emit(ir.Flatten, x)


@converts("Flatten")
def _flatten(ctx):
    x = ctx.value(0, layouts=("", "nhwc"))
    axis = int(ctx.attr("axis", 1))
    if axis % (len(x.shape) + 1) != 1:
        ctx.fail(f"axis {axis} is not supported (axis 1: (N, -1))")
    return _flat(ctx, x)


@converts("Reshape")
def _reshape(ctx):
    """Supported as a flatten to (N, features) or as a no-op (N, *shape)."""
    x = ctx.value(0, layouts=("", "nhwc"))
    target = ctx.ints(1, "shape")
    src = [ctx.imp.batch, *x.shape]
    if not ctx.attr("allowzero", 0):
        target = [src[j] if d == 0 and j < len(src) else d for j, d in enumerate(target)]
    if target.count(-1) == 1:
        known = math.prod(d for d in target if d != -1)
        if known > 0 and math.prod(src) % known == 0:
            target[target.index(-1)] = math.prod(src) // known
    if target == src:
        return x
    if target == [ctx.imp.batch, math.prod(x.shape)]:
        return _flat(ctx, x)
    shown = ", ".join(map(str, x.shape))
    ctx.fail(
        f"reshape of (N, {shown}) to {ctx.ints(1, 'shape')} is not supported (only a "
        f"flatten to (N, -1))"
    )


@converts("Transpose")
def _transpose(ctx):
    x = ctx.value(0)
    perm = [int(p) for p in ctx.attr("perm", range(len(x.shape), -1, -1))]
    if perm == list(range(len(perm))):
        return x
    if perm == [0, 2, 3, 1] and len(x.shape) == 3:
        c, h, w = x.shape
        return replace(x, layout="nhwc", shape=(h, w, c), chw=x.shape)
    ctx.fail(
        f"perm {perm} is not supported; only [0, 2, 3, 1] right before a Flatten/Reshape that "
        f"feeds a Gemm/MatMul (a TensorFlow NHWC flatten)"
    )


def _host(ctx, op: str, axis_attr: bool):
    x = ctx.value(0, host_ok=True)
    if len(x.shape) != 1:
        ctx.fail(
            f"{ctx.op} is supported only as the last op, over the classes of an (N, classes) "
            f"output (the host applies it in float); this one is on (N, "
            f"{', '.join(map(str, x.shape))})"
        )
    if axis_attr:
        axis = int(ctx.attr("axis", 1 if ctx.opset < 13 else -1))
        if axis % 2 != 1:
            ctx.fail(f"{ctx.op} over axis {axis}: supported only over the classes (axis 1)")
    return replace(x, host=(*x.host, op))


@converts("Softmax")
def _softmax(ctx):
    return _host(ctx, "softmax", True)


@converts("LogSoftmax")
def _log_softmax(ctx):
    return _host(ctx, "log_softmax", True)


@converts("Sigmoid")
def _sigmoid(ctx):
    return _host(ctx, "sigmoid", False)


# ---- entry point -----------------------------------------------------------------------------


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def load(path) -> onnx.ModelProto:
    """Read and check an ONNX file; any failure is a one-line ``FxpgaError``."""
    path = Path(path)
    if not path.is_file():
        raise FxpgaError(f"{path}: no such file")
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise FxpgaError(
            f"{path}: {size:,} bytes is more than a model of at most {MAX_WEIGHTS:,} weights "
            f"can hold"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)  # no file but `path` is read
    except Exception as e:
        raise FxpgaError(f"{path}: not a readable ONNX model: {_first_line(e)}") from e
    supported = f"fxpga reads ONNX opsets {MIN_OPSET}..{MAX_OPSET} of the default domain"
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAIN), None)
    if opset is None:
        raise FxpgaError(f"{path}: the model imports no opset of the default domain; {supported}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise FxpgaError(f"{path}: opset {opset} is not supported; {supported}")
    for k, n in enumerate(model.graph.node):  # used or not: a model of other domains is refused
        if n.domain not in _DEFAULT_DOMAIN:
            raise FxpgaError(
                f"{path}: node '{n.name or f'{n.op_type}_{k}'}' is {n.op_type} of the domain "
                f"'{n.domain}'; {supported} (ai.onnx) only"
            )
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise FxpgaError(f"{path}: not a readable ONNX model: {_first_line(e)}") from e
    return model


def from_onnx(path, input_shape=None) -> ir.Graph:
    """Import the ONNX model at ``path`` as a folded ``ir.Graph``.

    ``input_shape`` is per sample, (C, H, W) or (F,): needed where the model's input has
    symbolic or unknown dimensions besides the batch, checked against them otherwise.
    """
    path = Path(path)
    return _Importer(load(path), path).run(input_shape)
