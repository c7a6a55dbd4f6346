"""PyTorch → graph IR, through torch.fx (nn.Module) or a torch.export ``.pt2`` archive.

Each supported op has a converter registered with ``@converts(...)``; a node that no converter
matches is an error naming the node, its op, the source line fx recorded, and what is supported.
BatchNorm is converted to an IR node and folded away afterwards (``ir.fold_batchnorm``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import operator
import re
import signal
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export.pt2_archive import PT2ArchiveWriter
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import FxpgaError
from ..limits import LARGEST_BOARD, MAX_TENSOR_ELEMENTS, MAX_WEIGHTS
from . import ir

_WHY_TENSOR = f"two 8-bit feature maps that size fill the {LARGEST_BOARD}'s block RAM"

SUPPORTED = (
    "Conv2d (any groups: depthwise, grouped; dilation=1, zero padding), ZeroPad2d/F.pad, Linear, "
    "BatchNorm1d/2d after a Conv2d/Linear, ReLU, ReLU6/Hardtanh/clamp, MaxPool2d/F.max_pool2d, "
    "AvgPool2d/F.avg_pool2d, global average pooling (AdaptiveAvgPool2d, x.mean((2, 3))), "
    "Flatten/view(N, -1), x + y / torch.add (residual), torch.cat(dim=1), "
    "Dropout, Identity; Softmax/LogSoftmax/Sigmoid as the last op (applied by the host)"
)

_CONVERTERS: dict[object, Callable] = {}
_DROP = object()  # a converter returns this for ops that vanish at inference (Dropout, Identity)


@dataclass(frozen=True)
class _Host:
    """A converter returns this for a monotone last op the host applies in float."""

    op: str


def converts(*targets):
    def register(fn):
        for t in targets:
            _CONVERTERS[t] = fn
        return fn

    return register


_TORCH_DIR = str(Path(torch.__file__).parent)


def source_of(node: torch.fx.Node) -> str | None:
    """``file.py:line`` of the innermost user frame in the node's recorded stack, if any."""
    trace = node.meta.get("stack_trace") or getattr(node, "stack_trace", None)
    if not trace:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    user = [(f, ln) for f, ln in frames if not f.startswith(_TORCH_DIR) and "/torch/" not in f]
    if not user:
        return None
    f, ln = user[-1]
    return f"{Path(f).name}:{ln}"


class _Ctx:
    """What a converter can see: the node, its resolved arguments and the traced module."""

    def __init__(self, gm: torch.fx.GraphModule, node: torch.fx.Node, name: str, value=None):
        self.gm, self.node, self.name = gm, node, name
        self.source = source_of(node)
        self.value = value or {}  # fx node → the IR tensor it carries

    def tensor_name(self, arg) -> str:
        """The IR tensor an fx argument carries; anything else (a constant) is refused."""
        if isinstance(arg, torch.fx.Node) and arg in self.value:
            return self.value[arg]
        self.fail(f"expects tensors computed from the input, got {arg!r}")

    def where(self) -> str:
        s = f"node '{self.node.name}' ({self.node.op} {_target_name(self.node)})"
        return s + (f" at {self.source}" if self.source else "")

    def fail(self, why: str):
        raise FxpgaError(f"{self.where()}: {why}")

    def tensor(self, arg) -> np.ndarray | None:
        """A parameter/buffer argument (a get_attr node) as float64 numpy, or None."""
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            t = self.gm
            for part in arg.target.split("."):
                t = getattr(t, part)
            return t.detach().to(torch.float64).cpu().numpy().copy()
        self.fail(f"expected a parameter, got {arg!r}")

    def out_shape(self) -> tuple[int, ...] | None:
        return _meta_shape(self.node)

    def in_shape(self) -> tuple[int, ...] | None:
        """The shape of the node's first input (batch included), as traced."""
        return _meta_shape(self.node.all_input_nodes[0])


def _meta_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    """A node's traced shape: ``val`` (torch.export) or ``tensor_meta`` (ShapeProp)."""
    v = node.meta.get("val")
    if v is None:
        v = node.meta.get("tensor_meta")
    return tuple(v.shape) if v is not None and hasattr(v, "shape") else None


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return t
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", None) or str(t)


def _finite(ctx: _Ctx, **arrays):
    for k, a in arrays.items():
        if a is not None and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            ctx.fail(f"{k} has {bad} non-finite value(s) (NaN or inf)")


def _conv(ctx, w, b, stride, padding, dilation, groups, padding_mode="zeros"):
    if w is None or w.ndim != 4:
        ctx.fail("only 2-D convolution is supported")
    if tuple(ir._pair(dilation)) != (1, 1):
        ctx.fail(f"dilation={dilation} is not supported (only 1)")
    if padding_mode != "zeros":
        ctx.fail(f"padding_mode='{padding_mode}' is not supported (only 'zeros')")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and all(k % 2 == 1 for k in w.shape[2:]):
            padding = (w.shape[2] // 2, w.shape[3] // 2)
        else:
            ctx.fail(f"padding='{padding}' is only supported as 'valid' or 'same' with odd kernels")
    if b is None:
        b = np.zeros(w.shape[0])
    _finite(ctx, weight=w, bias=b)
    return ir.Conv(
        ctx.name,
        weight=w,
        bias=b,
        stride=ir._pair(stride),
        padding=ir._pair(padding),
        groups=int(groups),
        source=ctx.source,
    )


def _linear(ctx, w, b):
    if b is None:
        b = np.zeros(w.shape[0])
    _finite(ctx, weight=w, bias=b)
    return ir.Linear(ctx.name, weight=w, bias=b, source=ctx.source)


def _bn(ctx, gamma, beta, mean, var, eps):
    if mean is None or var is None:
        ctx.fail(
            "BatchNorm without running statistics (track_running_stats=False) cannot be folded"
        )
    c = mean.shape[0]
    gamma = np.ones(c) if gamma is None else gamma
    beta = np.zeros(c) if beta is None else beta
    _finite(ctx, weight=gamma, bias=beta, running_mean=mean, running_var=var)
    scale = gamma / np.sqrt(var + eps)
    return ir.BatchNorm(ctx.name, scale=scale, shift=beta - mean * scale, source=ctx.source)


def _pool(ctx, cls, kernel, stride, padding, ceil_mode=False, extra_ok=True):
    if ceil_mode:
        ctx.fail("ceil_mode=True is not supported")
    if not extra_ok:
        ctx.fail("dilation, count_include_pad=False and divisor_override are not supported")
    kernel = ir._pair(kernel)
    stride = kernel if stride is None or stride == [] else ir._pair(stride)
    return cls(ctx.name, kernel=kernel, stride=stride, padding=ir._pair(padding), source=ctx.source)


def _flatten(ctx):
    """A reshape is a Flatten only when it maps (N, ...) to (N, prod(...))."""
    src, dst = ctx.in_shape(), ctx.out_shape()
    if src is None or dst is None:
        ctx.fail("cannot tell the shapes of this reshape")
    if len(dst) == 2 and dst[0] == src[0] and dst[1] == int(np.prod(src[1:])):
        return ir.Flatten(ctx.name, source=ctx.source)
    ctx.fail(f"reshape {src} → {dst} is not a flatten to (N, -1)")


# ---- nn.Module converters (torch.fx symbolic_trace) -------------------------------------


@converts(nn.Conv2d)
def _m_conv(ctx, m: nn.Conv2d):
    return _conv(
        ctx,
        ctx_param(m.weight),
        ctx_param(m.bias),
        m.stride,
        m.padding,
        m.dilation,
        m.groups,
        m.padding_mode,
    )


@converts(nn.Linear)
def _m_linear(ctx, m: nn.Linear):
    return _linear(ctx, ctx_param(m.weight), ctx_param(m.bias))


@converts(nn.BatchNorm1d, nn.BatchNorm2d)
def _m_bn(ctx, m):
    if m.training:
        ctx.fail("BatchNorm is in training mode; call model.eval() first")
    w = ctx_param(m.weight) if m.affine else None
    b = ctx_param(m.bias) if m.affine else None
    return _bn(ctx, w, b, ctx_param(m.running_mean), ctx_param(m.running_var), m.eps)


@converts(nn.ReLU)
def _m_relu(ctx, m):
    return ir.ReLU(ctx.name, source=ctx.source)


@converts(nn.MaxPool2d)
def _m_maxpool(ctx, m):
    return _pool(
        ctx,
        ir.MaxPool,
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        extra_ok=ir._pair(m.dilation) == (1, 1) and not m.return_indices,
    )


@converts(nn.AvgPool2d)
def _m_avgpool(ctx, m):
    return _pool(
        ctx,
        ir.AvgPool,
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        extra_ok=m.count_include_pad and m.divisor_override is None,
    )


@converts(nn.Flatten)
def _m_flatten(ctx, m):
    return _flatten(ctx)


@converts(nn.Dropout, nn.Identity)
def _m_drop(ctx, m):
    return _DROP


def ctx_param(p) -> np.ndarray | None:
    return None if p is None else p.detach().to(torch.float64).cpu().numpy().copy()


# ---- functions and methods (torch.fx) ----------------------------------------------------


@converts(F.relu, torch.relu, "relu", torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
def _f_relu(ctx, *args, **kw):
    return ir.ReLU(ctx.name, source=ctx.source)


@converts(
    torch.flatten,
    "flatten",
    "view",
    "reshape",
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.flatten.using_ints,
    torch.ops.aten._unsafe_view.default,
)
def _f_flatten(ctx, *args, **kw):
    return _flatten(ctx)


MAX_PAD = 1024  # zeros on one side: more than any real network's


def _pad(ctx, pads, mode="constant", value=None):
    """Zero padding of the last two dims: (left, right[, top, bottom])."""
    if mode != "constant" or value not in (None, 0, 0.0):
        ctx.fail(f"padding with mode={mode!r}, value={value!r} is not supported (only zeros)")
    pads = tuple(int(p) for p in pads)
    if len(pads) == 2:
        pads += (0, 0)
    if len(pads) != 4 or not all(0 <= p <= MAX_PAD for p in pads):
        ctx.fail(f"pads {pads}: supported are (left, right, top, bottom) in 0..{MAX_PAD}")
    if not any(pads):
        return _DROP
    return ir.Pad(ctx.name, pads=pads, source=ctx.source)


@converts(nn.ZeroPad2d, nn.ConstantPad2d)
def _m_pad(ctx, m):
    return _pad(ctx, m.padding, "constant", getattr(m, "value", 0.0))


@converts(F.pad, torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)
def _f_pad(ctx, x, pad, mode="constant", value=None):
    if isinstance(mode, int | float):  # constant_pad_nd(x, pad, value)
        mode, value = "constant", mode
    return _pad(ctx, pad, mode, value)


def _clip(ctx, lo, hi):
    """An exact clamp in fixed point (ReLU6, Hardtanh, clamp); (0, None) is a ReLU."""
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo is None and hi is None:
        return _DROP
    if lo is not None and hi is not None and lo >= hi:
        ctx.fail(f"clamp to [{lo}, {hi}] is empty or a constant")
    if lo == 0.0 and hi is None:
        return ir.ReLU(ctx.name, source=ctx.source)
    return ir.Clip(ctx.name, lo=lo, hi=hi, source=ctx.source)


@converts(nn.ReLU6)
def _m_relu6(ctx, m):
    return _clip(ctx, 0.0, 6.0)


@converts(nn.Hardtanh)
def _m_hardtanh(ctx, m):
    return _clip(ctx, m.min_val, m.max_val)


@converts(F.relu6, torch.ops.aten.relu6.default)
def _f_relu6(ctx, *args, **kw):
    return _clip(ctx, 0.0, 6.0)


@converts(F.hardtanh, torch.ops.aten.hardtanh.default)
def _f_hardtanh(ctx, x, min_val=-1.0, max_val=1.0, *args, **kw):
    return _clip(ctx, min_val, max_val)


@converts(torch.clamp, torch.clip, "clamp", "clip")
@converts(torch.ops.aten.clamp.default, torch.ops.aten.clip.default)
def _f_clamp(ctx, x, min=None, max=None):
    for v in (min, max):
        if isinstance(v, torch.fx.Node):
            ctx.fail("clamp to a tensor bound is not supported (only number bounds)")
    return _clip(ctx, min, max)


@converts(nn.LeakyReLU, F.leaky_relu, torch.ops.aten.leaky_relu.default)
def _leaky(ctx, *args, **kw):
    ctx.fail(
        "LeakyReLU is not supported: its slope is a multiply by a non-power-of-two on every "
        "negative value, which the engine does not have; retrain with ReLU or ReLU6"
    )


def _input_chw(ctx, what: str) -> tuple[int, int, int]:
    shape = ctx.in_shape()
    if shape is None or len(shape) != 4:
        ctx.fail(f"{what} needs an (N, C, H, W) input, got {shape}")
    return shape[1:]


def _adaptive_avg(ctx, output_size):
    """Adaptive average pooling to an output that divides the input: a plain average pool
    (global pooling for output size 1)."""
    _, h, w = _input_chw(ctx, "adaptive average pooling")
    size = (output_size,) * 2 if isinstance(output_size, int) else tuple(output_size)
    oh, ow = (h if size[0] is None else size[0]), (w if size[-1] is None else size[-1])
    if h % oh or w % ow:
        ctx.fail(
            f"adaptive average pooling of {h}x{w} to {oh}x{ow}: supported only where the "
            f"output size divides the input (as in global pooling, output size 1)"
        )
    k = (h // oh, w // ow)
    return ir.AvgPool(ctx.name, kernel=k, stride=k, padding=(0, 0), source=ctx.source)


def _mean(ctx, dim, keepdim=False):
    """``x.mean((2, 3))``: global average pooling, then a flatten unless ``keepdim``."""
    _, h, w = _input_chw(ctx, "mean")
    dims = sorted(d % 4 for d in ((dim,) if isinstance(dim, int) else tuple(dim or ())))
    if dims != [2, 3]:
        ctx.fail(f"mean over dims {dim}: supported only over the spatial dims (2, 3)")
    pool = ir.AvgPool(ctx.name, kernel=(h, w), stride=(h, w), padding=(0, 0), source=ctx.source)
    return [pool] if keepdim else [pool, ir.Flatten(f"{ctx.name}_flatten", source=ctx.source)]


@converts(nn.AdaptiveAvgPool2d)
def _m_adaptive_avg(ctx, m):
    return _adaptive_avg(ctx, m.output_size)


@converts(F.adaptive_avg_pool2d, torch.ops.aten.adaptive_avg_pool2d.default)
def _f_adaptive_avg(ctx, x, output_size):
    return _adaptive_avg(ctx, output_size)


@converts(torch.mean, "mean", torch.ops.aten.mean.dim)
def _f_mean(ctx, x, dim=None, keepdim=False, **kw):
    return _mean(ctx, dim, keepdim)


def _host_tail(ctx, op: str, dim=None):
    """Softmax / log-softmax / sigmoid over the classes of a (N, classes) output: left to the
    host (the argmax does not change); anything else is refused."""
    shape = ctx.out_shape()
    if shape is None or len(shape) != 2 or (dim is not None and dim not in (1, -1)):
        got = f"over dim={dim} of " if dim is not None else "on "
        ctx.fail(
            f"{op} is supported only as the last op, over the classes of a (N, classes) "
            f"output (the host applies it in float); this one is {got}shape {shape}"
        )
    return _Host(op)


@converts(nn.Softmax, nn.LogSoftmax)
def _m_softmax(ctx, m):
    return _host_tail(ctx, "log_softmax" if isinstance(m, nn.LogSoftmax) else "softmax", m.dim)


@converts(nn.Sigmoid)
def _m_sigmoid(ctx, m):
    return _host_tail(ctx, "sigmoid")


@converts(F.softmax, torch.softmax, "softmax", torch.ops.aten.softmax.int)
@converts(torch.ops.aten._softmax.default)
def _f_softmax(ctx, x, dim=None, *args, **kw):
    return _host_tail(ctx, "softmax", dim)


@converts(F.log_softmax, torch.log_softmax, "log_softmax", torch.ops.aten.log_softmax.int)
@converts(torch.ops.aten._log_softmax.default)
def _f_log_softmax(ctx, x, dim=None, *args, **kw):
    return _host_tail(ctx, "log_softmax", dim)


@converts(F.sigmoid, torch.sigmoid, "sigmoid", torch.ops.aten.sigmoid.default)
def _f_sigmoid(ctx, *args, **kw):
    return _host_tail(ctx, "sigmoid")


@converts(
    F.dropout,
    torch.ops.aten.dropout.default,
    torch.ops.aten.clone.default,
    torch.ops.aten.contiguous.default,
    "contiguous",
)
def _f_drop(ctx, *args, **kw):
    return _DROP


@converts(operator.add, operator.iadd, torch.add, "add", "add_", torch.ops.aten.add.Tensor)
@converts(torch.ops.aten.add_.Tensor)
def _f_add(ctx, x, y, *args, alpha=1, **kw):
    """``x + y`` of two tensors: a residual add (a constant added is refused)."""
    if args or alpha != 1:
        ctx.fail(f"add with alpha={args[0] if args else alpha} is not supported (alpha=1 only)")
    inputs = (ctx.tensor_name(x), ctx.tensor_name(y))
    return ir.Add(ctx.name, source=ctx.source, inputs=inputs)


@converts(torch.cat, torch.concat, torch.concatenate, torch.ops.aten.cat.default)
def _f_cat(ctx, tensors, dim=0, *args, **kw):
    """``torch.cat(tensors, dim=1)``: channel concatenation."""
    rank = len(ctx.out_shape() or ())
    if dim not in (1, 1 - rank) or rank < 2:
        ctx.fail(f"concatenation along dim={dim} is not supported (channels only: dim=1)")
    return ir.Concat(ctx.name, source=ctx.source, inputs=tuple(ctx.tensor_name(t) for t in tensors))


# ---- aten ops (torch.export) -------------------------------------------------------------


@converts(torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding)
def _a_conv(ctx, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(ctx, ctx.tensor(w), ctx.tensor(b), stride, padding, dilation, groups)


@converts(torch.ops.aten.linear.default)
def _a_linear(ctx, x, w, b=None):
    return _linear(ctx, ctx.tensor(w), ctx.tensor(b))


@converts(torch.ops.aten.batch_norm.default)
def _a_bn(ctx, x, w, b, mean, var, training, momentum, eps, cudnn=False):
    if training:
        ctx.fail("BatchNorm is in training mode; export the model after model.eval()")
    return _bn(ctx, ctx.tensor(w), ctx.tensor(b), ctx.tensor(mean), ctx.tensor(var), eps)


@converts(torch.ops.aten._native_batch_norm_legit_no_training.default)
def _a_bn_legit(ctx, x, w, b, mean, var, momentum, eps):
    return _bn(ctx, ctx.tensor(w), ctx.tensor(b), ctx.tensor(mean), ctx.tensor(var), eps)


@converts(F.max_pool2d, torch.ops.aten.max_pool2d.default)
def _f_maxpool(
    ctx,
    x,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    return_indices=False,
):
    return _pool(
        ctx,
        ir.MaxPool,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        extra_ok=ir._pair(dilation) == (1, 1) and not return_indices,
    )


@converts(F.avg_pool2d, torch.ops.aten.avg_pool2d.default)
def _f_avgpool(
    ctx,
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return _pool(
        ctx,
        ir.AvgPool,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        extra_ok=count_include_pad and divisor_override is None,
    )


# ---- the walk ------------------------------------------------------------------------------


def _layer_name(gm, node: torch.fx.Node, used: set[str]) -> str:
    """Module path for modules (``features.0``); for export, the owner of the first parameter."""
    if node.op == "call_module":
        name = node.target
    else:
        name = node.name
        for a in node.all_input_nodes:
            if a.op == "get_attr" and "." in a.target:
                name = a.target.rsplit(".", 1)[0]
                break
    base, k = name, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def graph_from_fx(gm: torch.fx.GraphModule, input_shape) -> ir.Graph:
    """Convert a traced (and shape-propagated) GraphModule into a folded ``ir.Graph``."""
    nodes: list[ir.Node] = []
    value: dict[torch.fx.Node, str] = {}  # fx node → the IR value it carries ("input" or layer)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise FxpgaError(
            f"the model must take exactly one input tensor, it takes {len(placeholders)}"
        )
    used: set[str] = set()
    tail: list[str] = []  # monotone ops after the last layer, left to the host
    output = host_of = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            value[n] = ir.INPUT
            continue
        if n.op == "get_attr":
            continue
        if n.op == "output":
            outs = [a for a in torch.fx.node.map_arg(n.args, lambda a: a) if a is not None]
            out = outs[0]
            while isinstance(out, tuple | list):
                if len(out) != 1:
                    raise FxpgaError(f"the model must return one tensor, it returns {len(out)}")
                out = out[0]
            output = value.get(out)
            continue
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            continue  # torch.export's shape-guard check
        if n.op == "call_method" and n.target == "size":
            continue  # only feeds a view(x.size(0), -1), checked by shape there
        if n.op == "call_function" and n.target is operator.getitem:
            src = n.args[0]
            if n.args[1] == 0 and src in value:  # batch norm's (out, mean, invstd) tuple
                value[n] = value[src]
                continue
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            key = type(mod)
            args = (mod,)
            kwargs = {}
        else:
            key = n.target
            args = n.args
            kwargs = n.kwargs
        conv = _CONVERTERS.get(key)
        ctx = _Ctx(gm, n, "", value)
        if conv is None:
            ctx.fail(f"unsupported op; supported are {SUPPORTED}")
        tensor_in = [
            a
            for a in n.all_input_nodes
            if a.op != "get_attr" and not (a.op == "call_method" and a.target == "size")
        ]
        if not tensor_in or any(a not in value for a in tensor_in):
            ctx.fail("does not take a tensor computed from the model's input")
        ctx.name = _layer_name(gm, n, used)
        layer = conv(ctx, *args, **kwargs)
        if layer is _DROP or isinstance(layer, _Host):
            if len(tensor_in) != 1:
                ctx.fail("takes more than one tensor")
            value[n] = value[tensor_in[0]]
            if isinstance(layer, _Host):
                tail.append(layer.op)
                host_of = value[n]
            continue
        if tail:
            ctx.fail(
                f"follows a {tail[0]}: {tail[0]} is supported only as the last op (the host "
                f"applies it in float)"
            )
        layers = layer if isinstance(layer, list) else [layer]
        if not layers[0].inputs:
            if len(tensor_in) != 1:
                ctx.fail("takes more than one tensor where one is expected")
            layers[0].inputs = (value[tensor_in[0]],)
        for extra in layers[1:]:  # a second IR node from one op (mean's flatten): unique name
            base, k = extra.name, 1
            while extra.name in used:
                k += 1
                extra.name = f"{base}_{k}"
            used.add(extra.name)
        nodes += layers
        value[n] = layers[-1].name
    if tail and output != host_of:
        raise FxpgaError(f"{tail[0]} is supported only as the last op (the host applies it)")
    if nodes and output != nodes[-1].name:
        raise FxpgaError(
            f"the model's output is not its last layer '{nodes[-1].name}' (it returns "
            f"'{output}'); only one output is supported"
        )
    if not nodes:
        raise FxpgaError("the model has no supported layers")
    graph = ir.fold_batchnorm(ir.Graph(input_shape, nodes, tuple(tail)))
    check_sizes(graph)
    return graph


def check_input_shape(shape, where: str = "the model's input") -> tuple[int, ...]:
    """A per-sample input shape, (F,) or (C, H, W), of at most ``MAX_TENSOR_ELEMENTS``
    values: checked before a tensor of that shape is made."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise FxpgaError(f"{where}: expected a per-sample shape (F,) or (C, H, W), got {shape!r}")
    shape = dims
    n = math.prod(shape)
    if n > MAX_TENSOR_ELEMENTS:
        raise FxpgaError(
            f"{where}: samples of shape {shape} hold {n:,} values, more than "
            f"{MAX_TENSOR_ELEMENTS:,} ({_WHY_TENSOR})"
        )
    return shape


def check_sizes(graph: ir.Graph):
    """Every layer's output at most ``MAX_TENSOR_ELEMENTS`` values, all weights together at
    most ``MAX_WEIGHTS``: what the largest board could hold."""
    for n in graph.nodes:
        size = math.prod(n.out_shape)
        if size > MAX_TENSOR_ELEMENTS:
            raise FxpgaError(
                f"{n.where()}: its output {n.out_shape} holds {size:,} values, more than "
                f"{MAX_TENSOR_ELEMENTS:,} ({_WHY_TENSOR})"
            )
    weights = sum(n.weight.size + n.bias.size for n in graph.weighted())
    if weights > MAX_WEIGHTS:
        raise FxpgaError(
            f"the model has {weights:,} weights and biases, more than {MAX_WEIGHTS:,} (the "
            f"{LARGEST_BOARD}'s block RAM holds that many 2-bit words)"
        )


def from_module(model: nn.Module, input_shape) -> ir.Graph:
    """Trace ``model`` with torch.fx and convert it; ``input_shape`` is per sample (C, H, W)."""
    input_shape = check_input_shape(input_shape)
    try:
        gm = _trace(model, input_shape)
    except SystemExit as e:  # forward() is the user's code: exiting from it is an error
        raise FxpgaError(f"{type(model).__name__}.forward() called {_exit_call(e)}") from None
    for n in gm.graph.nodes:
        if "tensor_meta" in n.meta and not isinstance(n.meta["tensor_meta"], tuple | list):
            n.meta["val"] = n.meta["tensor_meta"]
    return graph_from_fx(gm, input_shape)


def _trace(model: nn.Module, input_shape) -> torch.fx.GraphModule:
    model = model.eval()
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as e:  # symbolic tracing fails on data-dependent control flow
        raise FxpgaError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}".splitlines()[0]
        ) from e
    gm = torch.fx.GraphModule(tracer.root, graph)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints its own traceback
            ShapeProp(gm).propagate(torch.zeros((2, *input_shape)))
    except Exception as e:
        cause = e.__cause__ or e
        at = re.search(r"node=%(\S+)", str(e))
        at = f" at node '{at.group(1)}'" if at else ""
        raise FxpgaError(
            f"model {type(model).__name__} does not accept inputs of shape "
            f"(N, {', '.join(map(str, input_shape))}){at}: "
            f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
        ) from e
    return gm


# ---- torch.export archives ------------------------------------------------------------------
#
# torch.export.load runs code stored in a .pt2: it unpickles payloads with weights_only=False
# (pickled weights and constants, custom objects; the example inputs once weights_only=True
# fails), hands symbolic shape expressions to sympy.sympify (an eval), and
# ExportedProgram.module() exec()s the archive's guards_code. So fxpga reads the archive itself
# and gives torch a rebuilt one holding only what it checked: the program as plain JSON values
# (names, numbers, aten ops), the weights' raw bytes, and example inputs fxpga wrote. An archive
# that needs anything else loads only when the user trusts it (``trust_pickle``), through
# torch.export.load itself.

# four times what a .pt2 of the largest model fxpga can build needs (its weights as float64)
MAX_ARCHIVE_BYTES = 64 << 20
_WHY_ARCHIVE = "four times a .pt2 of the largest model fxpga can build, its weights as float64"
MAX_STACK_TRACE = 1 << 16  # characters of one node's recorded stack trace (a few hundred frames)
MAX_SPEC_DEPTH = 16  # nesting of the program's input/output structure (tuples, lists, dicts)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # a node, tensor or argument name
# a parameter's path; no part a dunder (torch setattr()s along it, from the module's class up)
_FQN = re.compile(r"(?!__)[A-Za-z0-9_]{1,255}(\.(?!__)[A-Za-z0-9_]{1,255}){0,63}")
_WORD = re.compile(r"[A-Za-z0-9_]{0,64}")  # a string argument (padding='same', mode)
_DEVICE = re.compile(r"[a-z]{1,16}")
_ATEN = re.compile(r"torch\.ops\.aten\.(?!__)[A-Za-z0-9_]+\.(?!__)[A-Za-z0-9_]+")
# a free size (a dynamic batch): the only shape expression read, replaced by its example value
_SIZE_SYMBOL = re.compile(r"s\d{1,9}|Symbol\('s\d{1,9}'(, (positive|integer)=True)*\)")
_NON_FINITE = ("Infinity", "-Infinity", "NaN")  # how the archive's JSON writes such floats
_INT64 = (-(2**63), 2**63 - 1)
_TRUST = (
    "torch.export.load could run code stored there, so fxpga does not load it that way "
    "(pass --trust-pickle to load an archive you trust)"
)


class _Archive:
    """A ``.pt2`` (a zip of ``<root>/<member>``) read into memory, and the checked rebuild of it
    that torch loads (``rebuild``)."""

    def __init__(self, path: Path):
        self.path = path
        self.members = _zip_members(path)
        self.in_spec = None

    def bad(self, why: str) -> FxpgaError:
        return FxpgaError(f"{self.path}: not a torch.export archive fxpga can read: {why}")

    def unsafe(self, what: str) -> FxpgaError:
        return FxpgaError(f"{self.path}: {what}: {_TRUST}")

    def unsupported(self, what: str) -> FxpgaError:
        return FxpgaError(f"{self.path}: {what}")

    # -- plain JSON values

    def member_json(self, name: str):
        data = self.members.get(name)
        if data is None:
            raise self.bad(f"it has no {name}")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise self.bad(f"{name} is not JSON ({_first_line(e)})") from None

    def fields(self, v, where: str, keys=()) -> dict:
        if not isinstance(v, dict):
            raise self.bad(f"{where}: expected an object, got {type(v).__name__}")
        for k in keys:
            if k not in v:
                raise self.bad(f"{where}: no '{k}'")
        return v

    def items(self, v, where: str) -> list:
        if not isinstance(v, list):
            raise self.bad(f"{where}: expected a list, got {type(v).__name__}")
        return v

    def integer(self, v, where: str, lo=_INT64[0], hi=_INT64[1]) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise self.bad(f"{where}: expected an integer in {lo}..{hi}, got {str(v)[:40]!r}")
        return v

    def flag(self, v, where: str) -> bool:
        if type(v) is not bool:
            raise self.bad(f"{where}: expected true or false, got {str(v)[:40]!r}")
        return v

    def number(self, v, where: str):
        if type(v) in (int, float) or v in _NON_FINITE:
            return v
        raise self.bad(f"{where}: expected a number, got {str(v)[:40]!r}")

    def plain_name(self, v, where: str, pattern=_NAME) -> str:
        if not isinstance(v, str) or not pattern.fullmatch(v):
            raise self.bad(f"{where}: {str(v)[:60]!r} is not a plain name")
        return v

    def union(self, v, where: str) -> tuple[str, object]:
        if not isinstance(v, dict) or len(v) != 1:
            raise self.bad(f"{where}: expected an object of one field")
        ((kind, value),) = v.items()
        return kind, value

    # -- the program

    def tensor_ref(self, v, where: str) -> dict:
        return {"name": self.plain_name(self.fields(v, where, ("name",))["name"], where)}

    def optional_tensor(self, v, where: str) -> dict:
        kind, value = self.union(v, where)
        if kind == "as_tensor":
            return {kind: self.tensor_ref(value, where)}
        if kind == "as_none":
            return {kind: self.flag(value, where)}
        raise self.bad(f"{where}: expected a tensor or none, got {kind[:40]!r}")

    def device(self, v, where: str) -> dict:
        v = self.fields(v, where, ("type",))
        index = v.get("index")
        return {
            "type": self.plain_name(v["type"], where, _DEVICE),
            "index": None if index is None else self.integer(index, where, 0, 1023),
        }

    def arg(self, a, where: str) -> dict:
        """An argument of plain values; symbolic values, objects and subgraphs are refused."""
        kind, v = self.union(a, where)
        one = {
            "as_none": self.flag,
            "as_tensor": self.tensor_ref,
            "as_optional_tensor": self.optional_tensor,
            "as_int": self.integer,
            "as_scalar_type": self.integer,
            "as_memory_format": self.integer,
            "as_layout": self.integer,
            "as_float": self.number,
            "as_bool": self.flag,
            "as_string": lambda s, w: self.plain_name(s, w, _WORD),
            "as_device": self.device,
        }
        many = {
            "as_tensors": self.tensor_ref,
            "as_optional_tensors": self.optional_tensor,
            "as_ints": self.integer,
            "as_floats": self.number,
            "as_bools": self.flag,
            "as_strings": lambda s, w: self.plain_name(s, w, _WORD),
        }
        if kind in one:
            return {kind: one[kind](v, where)}
        if kind in many:
            return {kind: [many[kind](x, where) for x in self.items(v, where)]}
        if kind.startswith("as_sym"):
            raise self.unsafe(f"{where} is symbolic (a sympy expression)")
        if kind == "as_custom_obj":
            raise self.unsafe(f"{where} is a custom object (pickled)")
        raise self.unsupported(f"{where}: {kind[:40]!r} arguments are not supported")

    def size(self, s, where: str) -> dict:
        kind, v = self.union(s, where)
        if kind == "as_int":
            return {kind: self.integer(v, where, 0)}
        if kind == "as_expr":
            v = self.fields(v, where, ("expr_str",))
            expr, hint = v["expr_str"], v.get("hint")
            if (
                isinstance(expr, str)
                and _SIZE_SYMBOL.fullmatch(expr)
                and isinstance(hint, dict)
                and list(hint) == ["as_int"]
            ):
                return {"as_int": self.integer(hint["as_int"], where, 0)}
            raise self.unsafe(f"{where} has the symbolic size {str(expr)[:60]!r}")
        raise self.bad(f"{where}: expected a size, got {kind[:40]!r}")

    def static(self, s, where: str) -> dict:
        kind, v = self.union(s, where)
        if kind != "as_int":
            raise self.unsafe(f"{where} has a symbolic stride or offset")
        return {kind: self.integer(v, where, 0)}

    def meta(self, m, where: str) -> dict:
        keys = ("dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout")
        m = self.fields(m, where, keys)
        sizes, strides = self.items(m["sizes"], where), self.items(m["strides"], where)
        if len(sizes) > 16 or len(strides) != len(sizes):
            raise self.bad(f"{where}: {len(sizes)} sizes and {len(strides)} strides")
        return {
            "dtype": self.integer(m["dtype"], where, 0, 255),
            "sizes": [self.size(s, where) for s in sizes],
            "requires_grad": self.flag(m["requires_grad"], where),
            "device": self.device(m["device"], where),
            "strides": [self.static(s, where) for s in strides],
            "storage_offset": self.static(m["storage_offset"], where),
            "layout": self.integer(m["layout"], where, 0, 255),
        }

    def node(self, n, i: int) -> dict:
        n = self.fields(n, f"node {i}", ("target", "inputs", "outputs"))
        name = n.get("name")
        name = None if name is None else self.plain_name(name, f"node {i}")
        where = f"node '{name}'" if name else f"node {i}"
        target = n["target"]
        if not isinstance(target, str):
            raise self.bad(f"{where}: its target is not a string")
        if target != "_operator.getitem" and not _ATEN.fullmatch(target):
            if target.startswith("torch.ops.higher_order."):
                raise self.unsupported(
                    f"{where}: control flow ({target[23:][:40]!r}) is not supported"
                )
            raise self.unsupported(
                f"{where} calls {target[:80]!r}: unsupported op; supported are {SUPPORTED}"
            )
        inputs = []
        for a in self.items(n["inputs"], where):
            a = self.fields(a, where, ("name", "arg"))
            kind = a.get("kind")
            inputs.append(
                {
                    "name": self.plain_name(a["name"], where),
                    "arg": self.arg(a["arg"], f"{where} argument '{a['name']}'"),
                    "kind": None if kind is None else self.integer(kind, where, 0, 2),
                }
            )
        out = {
            "target": target,
            "inputs": inputs,
            "outputs": [self.arg(a, f"{where} output") for a in self.items(n["outputs"], where)],
            "metadata": {},
            "name": name,
        }
        meta = n.get("metadata")
        trace = meta.get("stack_trace") if isinstance(meta, dict) else None
        # kept for source_of(); fx prints lines of it as comments in generated code
        if (
            isinstance(trace, str)
            and len(trace) <= MAX_STACK_TRACE
            and trace.replace("\n", "").isprintable()
        ):
            out["metadata"]["stack_trace"] = trace
        return out

    def graph(self, g) -> dict:
        g = self.fields(g, "graph", ("inputs", "outputs", "nodes", "tensor_values"))
        if g.get("custom_obj_values"):
            raise self.unsafe("the program holds custom objects (pickled)")
        for k in ("sym_int_values", "sym_bool_values", "sym_float_values"):
            if g.get(k):
                raise self.unsafe("the program computes symbolic values (sympy expressions)")
        tensors = self.fields(g["tensor_values"], "tensor_values")
        return {
            "inputs": [self.arg(a, "graph input") for a in self.items(g["inputs"], "graph")],
            "outputs": [self.arg(a, "graph output") for a in self.items(g["outputs"], "graph")],
            "nodes": [self.node(n, i) for i, n in enumerate(self.items(g["nodes"], "graph"))],
            "tensor_values": {
                self.plain_name(k, "tensor_values"): self.meta(v, f"tensor '{k}'")
                for k, v in tensors.items()
            },
            "sym_int_values": {},
            "sym_bool_values": {},
            "is_single_tensor_return": self.flag(g.get("is_single_tensor_return", False), "graph"),
        }

    def input_spec(self, s) -> dict:
        kind, v = self.union(s, "input spec")
        v = self.fields(v, "input spec", ("arg",))
        if kind == "user_input":
            a = self.arg(v["arg"], "user input")
            if "as_tensor" not in a:
                raise self.unsupported(
                    "the program takes a non-tensor input; fxpga takes one tensor"
                )
            return {kind: {"arg": a}}
        ref = self.tensor_ref(v["arg"], f"{kind} input")
        key = {"parameter": "parameter_name", "buffer": "buffer_name"}
        key["tensor_constant"] = "tensor_constant_name"
        if kind in key:
            fqn = self.plain_name(v.get(key[kind]), f"{kind} input", _FQN)
            out = {"arg": ref, key[kind]: fqn}
            if kind == "buffer":
                out["persistent"] = self.flag(v.get("persistent", True), "buffer input")
            return {kind: out}
        if kind == "custom_obj":
            raise self.unsafe("the program takes a custom object (pickled)")
        raise self.unsupported(f"the program takes a {kind[:40]!r} input; fxpga takes one tensor")

    def output_spec(self, s) -> dict:
        kind, v = self.union(s, "output spec")
        v = self.fields(v, "output spec", ("arg",))
        if kind == "user_output":
            return {kind: {"arg": self.arg(v["arg"], "user output")}}
        if kind == "buffer_mutation":  # BatchNorm exported in training mode (refused later)
            ref = self.tensor_ref(v["arg"], "buffer mutation")
            fqn = self.plain_name(v.get("buffer_name"), kind, _FQN)
            return {kind: {"arg": ref, "buffer_name": fqn}}
        raise self.unsupported(
            f"the program has a {kind[:40]!r} output; it is not an inference program"
        )

    def spec_node(self, n, where: str, depth: int = 0) -> dict:
        """One node of a pytree structure: a tensor, a tuple, a list or a dict of named ones."""
        if depth > MAX_SPEC_DEPTH:
            raise self.bad(f"{where} is nested more than {MAX_SPEC_DEPTH} deep")
        n = self.fields(n, where, ("type", "context", "children_spec"))
        kids = self.items(n["children_spec"], where)
        t, context = n["type"], n["context"]
        if t is None:
            if kids or context is not None:
                raise self.bad(f"{where}: a leaf with children")
            return {"type": None, "context": None, "children_spec": []}
        if t in ("builtins.tuple", "builtins.list"):
            if context != "null":
                raise self.bad(f"{where}: a {t} with context {str(context)[:40]!r}")
        elif t == "builtins.dict":
            try:
                keys = json.loads(context) if isinstance(context, str) else None
            except ValueError:
                keys = None
            if not isinstance(keys, list) or len(keys) != len(kids):
                raise self.bad(f"{where}: a dict without its keys")
            context = json.dumps([self.plain_name(k, where) for k in keys])
        else:
            raise self.unsupported(f"the program's inputs or outputs hold a {str(t)[:60]!r}")
        children = [self.spec_node(k, where, depth + 1) for k in kids]
        return {"type": t, "context": context, "children_spec": children}

    def spec(self, s, where: str) -> tuple[str, dict]:
        try:
            v = json.loads(s) if isinstance(s, str) else None
        except (ValueError, RecursionError):
            v = None
        if not (isinstance(v, list) and len(v) == 2 and type(v[0]) is int):
            raise self.bad(f"{where} is not a [version, structure] pair")
        tree = self.spec_node(v[1], where)
        return json.dumps([v[0], tree]), tree

    def call_graph(self, entries) -> list:
        """The root entry only: the others serve torch.export.unflatten."""
        entries = self.items(entries, "module_call_graph")
        if not entries:
            raise self.bad("module_call_graph is empty")
        root = self.fields(entries[0], "module_call_graph", ("fqn", "signature"))
        sig = self.fields(root["signature"], "module call signature", ("in_spec", "out_spec"))
        if root["fqn"] != "":
            raise self.bad("module_call_graph does not start with the root module")
        in_spec, self.in_spec = self.spec(sig["in_spec"], "in_spec")
        out = {
            "inputs": [self.arg(a, "call input") for a in self.items(sig.get("inputs", []), "")],
            "outputs": [self.arg(a, "call output") for a in self.items(sig.get("outputs", []), "")],
            "in_spec": in_spec,
            "out_spec": self.spec(sig["out_spec"], "out_spec")[0],
        }
        names = sig.get("forward_arg_names")
        if names is not None:
            out["forward_arg_names"] = [
                self.plain_name(a, "forward_arg_names") for a in self.items(names, "")
            ]
        return [{"fqn": "", "signature": out}]

    def program(self) -> dict:
        """models/model.json, rebuilt from checked values. Range constraints and guards (checks of
        the inputs when the module runs) are left out: fxpga reads the graph, never runs it."""
        keys = ("graph_module", "opset_version", "schema_version")
        p = self.fields(self.member_json("models/model.json"), "models/model.json", keys)
        keys = ("graph", "signature", "module_call_graph")
        gm = self.fields(p["graph_module"], "graph_module", keys)
        sig = self.fields(gm["signature"], "signature", ("input_specs", "output_specs"))
        version = self.fields(p["schema_version"], "schema_version", ("major", "minor"))
        opsets = self.fields(p["opset_version"], "opset_version")
        verifiers = self.items(p.get("verifiers", []), "verifiers")
        for v in verifiers:
            if v not in ("ATEN", "TRAINING"):
                raise self.bad(f"unknown verifier {str(v)[:40]!r}")
        return {
            "graph_module": {
                "graph": self.graph(gm["graph"]),
                "signature": {
                    "input_specs": [self.input_spec(s) for s in self.items(sig["input_specs"], "")],
                    "output_specs": [
                        self.output_spec(s) for s in self.items(sig["output_specs"], "")
                    ],
                },
                "module_call_graph": self.call_graph(gm["module_call_graph"]),
            },
            "opset_version": {
                self.plain_name(k, "opset_version"): self.integer(v, "opset_version")
                for k, v in opsets.items()
            },
            "range_constraints": {},
            "schema_version": {
                "major": self.integer(version["major"], "schema_version", 0, 1 << 16),
                "minor": self.integer(version["minor"], "schema_version", 0, 1 << 16),
            },
            "verifiers": verifiers,
        }

    # -- weights and constants

    def payloads(self, kind: str) -> tuple[dict, dict[str, bytes]]:
        """data/{kind}/model_{kind}_config.json with the raw-bytes members it names; pickled
        payloads (tensor subclasses, custom objects) are refused."""
        what = kind[:-1]  # "weight", "constant"
        if f"data/{kind}/model.pt" in self.members:
            raise self.unsafe(f"its {kind} are one pickled file (data/{kind}/model.pt)")
        name = f"data/{kind}/model_{kind}_config.json"
        raw = self.fields(self.member_json(name), name, ("config",))["config"]
        entries = self.fields(raw, name)
        prefix = "weight_" if kind == "weights" else "tensor_"
        config, files = {}, {}
        for fqn, m in entries.items():
            fqn = self.plain_name(fqn, name, _FQN)
            where = f"{what} '{fqn}'"
            m = self.fields(m, where, ("path_name", "use_pickle", "tensor_meta"))
            file = m["path_name"]
            if m["use_pickle"] is not False or str(file).startswith(("custom_obj_", "opaque_obj_")):
                raise self.unsafe(f"{where} is pickled (a tensor subclass or custom object)")
            if not isinstance(file, str) or not re.fullmatch(prefix + r"\d{1,9}", file):
                raise self.bad(f"{where} is stored as {str(file)[:40]!r}")
            member = f"data/{kind}/{file}"
            if member not in self.members:
                raise self.bad(f"{where}: it has no {member}")
            files[member] = self.members[member]
            config[fqn] = {
                "path_name": file,
                "is_param": self.flag(m.get("is_param", False), where),
                "use_pickle": False,
                "tensor_meta": self.meta(m["tensor_meta"], where),
            }
        return {"config": config}, files

    def example_inputs(self) -> bytes:
        """Example inputs of the program's input structure, written here: torch uses only their
        structure (fxpga takes the input shape from the graph)."""

        def build(n):
            kids = [build(k) for k in n["children_spec"]]
            if n["type"] is None:
                return torch.zeros(())
            if n["type"] == "builtins.dict":
                return dict(zip(json.loads(n["context"]), kids, strict=True))
            return tuple(kids) if n["type"] == "builtins.tuple" else kids

        buf = io.BytesIO()
        torch.save(build(self.in_spec), buf)
        return buf.getvalue()

    def rebuild(self) -> io.BytesIO:
        m = self.members
        if m.get("archive_format") != b"pt2":
            raise self.bad("no archive_format 'pt2' in it")
        if m.get("archive_version") != b"0":
            version = m.get("archive_version", b"")[:16]
            raise self.bad(f"archive_version {version!r} (fxpga reads 0)")
        for d in ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/"):
            if any(k.startswith(d) for k in m):
                raise self.unsafe(f"it holds compiled code or payloads ({d.rstrip('/')})")
        program = self.program()
        weights, weight_files = self.payloads("weights")
        constants, constant_files = self.payloads("constants")
        buf = io.BytesIO()
        with PT2ArchiveWriter(buf) as w:
            w.write_string("models/model.json", json.dumps(program))
            w.write_string("data/weights/model_weights_config.json", json.dumps(weights))
            w.write_string("data/constants/model_constants_config.json", json.dumps(constants))
            for member, data in {**weight_files, **constant_files}.items():
                w.write_bytes(member, data)
            w.write_bytes("data/sample_inputs/model.pt", self.example_inputs())
        buf.seek(0)
        return buf


def _zip_members(path: Path) -> dict[str, bytes]:
    """The members of the zip at ``path`` by name under its one root folder, at most
    ``MAX_ARCHIVE_BYTES`` in all; the layout before the pt2 archive (members at the top, the
    weights pickled) is refused."""
    _check_archive_size(path)
    members, total = {}, 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                with z.open(info) as f:
                    data = f.read(MAX_ARCHIVE_BYTES - total + 1)
                total += len(data)
                if total > MAX_ARCHIVE_BYTES:
                    raise FxpgaError(
                        f"{path}: unpacks to more than {MAX_ARCHIVE_BYTES:,} bytes ({_WHY_ARCHIVE})"
                    )
                members[info.filename] = data
    except FxpgaError:
        raise
    except Exception as e:  # zipfile on a damaged file: BadZipFile, EOFError, zlib.error, ...
        raise FxpgaError(
            f"{path}: not a torch.export archive (not a readable zip file: {_first_line(e)})"
        ) from None
    roots = {n.split("/", 1)[0] if "/" in n else "" for n in members}
    if "serialized_exported_program.json" in members:
        raise FxpgaError(f"{path}: it is in an older torch's format, its weights pickled: {_TRUST}")
    if len(roots) != 1 or "" in roots:
        raise FxpgaError(f"{path}: not a torch.export archive (its members are not in one folder)")
    (root,) = roots
    return {n[len(root) + 1 :]: d for n, d in members.items()}


def _check_archive_size(path: Path):
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise FxpgaError(
            f"{path}: {size:,} bytes, more than {MAX_ARCHIVE_BYTES:,} ({_WHY_ARCHIVE})"
        )


def _first_line(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:  # a user exception's __str__ may itself fail
        text = ""
    lines = text.strip().splitlines()
    return lines[0] if lines else type(e).__name__


class _HeldLogs(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _torch_logs_held():
    """torch's log records and warnings inside the block are kept, not printed (torch.export.load
    logs a traceback, then raises a vaguer error of its own); yields the kept records."""
    held = _HeldLogs()
    known = logging.root.manager.loggerDict.items()
    loggers = [lg for n, lg in known if n.startswith("torch.") and isinstance(lg, logging.Logger)]
    top = logging.getLogger("torch")
    saved = [(lg, lg.handlers, lg.propagate) for lg in (top, *loggers)]
    for lg in loggers:
        lg.handlers, lg.propagate = [], True
    top.handlers, top.propagate = [held], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield held.records
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate


def _load_program(path: Path, trust_pickle: bool) -> torch.fx.GraphModule:
    """The program of a .pt2 as an fx GraphModule with its weights as attributes."""
    if trust_pickle:
        _check_archive_size(path)
        try:
            if not zipfile.is_zipfile(path):
                raise FxpgaError(f"{path}: not a torch.export archive (not a zip file)")
        except OSError as e:
            raise FxpgaError(f"{path}: cannot read it: {_first_line(e)}") from None
        source = str(path)
    else:
        source = _Archive(path).rebuild()
    with _torch_logs_held() as records, _user_code(f"{path}: torch.export.load"):
        try:
            return torch.export.load(source).module()
        except Exception as e:
            logged = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]]
            cause = logged[-1] if logged else e
            raise FxpgaError(
                f"{path}: torch.export.load cannot load it: {type(cause).__name__}: "
                f"{_first_line(cause)}"
            ) from e


def from_export(path: Path, *, trust_pickle: bool = False) -> ir.Graph:
    """Load a ``torch.export`` archive (``.pt2``); the input shape comes from its example input.

    Without ``trust_pickle`` only what fxpga checked reaches torch (see ``_Archive``), and an
    archive that needs more is refused; with it, ``torch.export.load`` reads the file as it is,
    which can run code stored in it."""
    gm = _load_program(Path(path), trust_pickle)
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(ph) != 1 or "val" not in ph[0].meta:
        raise FxpgaError(f"{path}: the exported program must take exactly one tensor input")
    shape = tuple(int(d) for d in ph[0].meta["val"].shape[1:])
    return graph_from_fx(gm, check_input_shape(shape, f"{path}: its example input"))


# ---- user code (path/file.py:factory) -------------------------------------------------------


class _Timeout(BaseException):
    """Raised by ``time_limit``'s alarm: not an ``Exception``, so that user code's
    ``except Exception`` does not swallow it."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def _exit_call(e: SystemExit) -> str:
    return "sys.exit()" if e.code is None else f"sys.exit({e.code!r})"


@contextlib.contextmanager
def _user_code(what: str):
    """Run user code: whatever it raises but KeyboardInterrupt (SystemExit included) becomes an
    FxpgaError naming ``what``, as does ``time_limit`` running out inside it."""
    try:
        yield
    except (KeyboardInterrupt, FxpgaError):
        raise
    except _Timeout as t:
        raise FxpgaError(f"{what} did not return within {t.seconds:g} s") from None
    except SystemExit as e:
        raise FxpgaError(f"{what} called {_exit_call(e)}") from None
    except BaseException as e:
        raise FxpgaError(f"{what} raised {type(e).__name__}: {_first_line(e)}") from e


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Stop the block after ``seconds`` (None: no limit) with ``FxpgaError("{what} did not return
    within N s")``, or the error of the ``_user_code`` block it was in. A SIGALRM timer in the
    main thread; the previous handler and timer are restored after."""
    if seconds is None:
        yield
        return
    if not hasattr(signal, "setitimer") or threading.current_thread() != threading.main_thread():
        raise FxpgaError(f"a time limit on {what} needs SIGALRM in the main thread (POSIX)")

    def expire(signum, frame):
        raise _Timeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    outer, start = signal.setitimer(signal.ITIMER_REAL, seconds), time.monotonic()
    try:
        yield
    except _Timeout as t:
        raise FxpgaError(f"{what} did not return within {t.seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if outer[0] > 0:  # an enclosing timer keeps what it had left (at least 1 ms)
            left = max(outer[0] - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer[1])


def load_factory(spec: str, weights: str | None):
    """``path/file.py:factory`` → the nn.Module it returns, with ``weights`` loaded if given.

    The user's code (the import, the factory, the module's load_state_dict and eval) runs
    under ``_user_code``: an exit or an error from it is an FxpgaError naming the file."""
    path_s, _, attr = spec.rpartition(":")
    path = Path(path_s)
    if not path.is_file():
        raise FxpgaError(f"{path}: no such file (model '{spec}')")
    modname = f"_fxpga_user_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[modname] = module
    with _user_code(f"{path}: importing it"):
        loader.loader.exec_module(module)
    with _user_code(f"{path}: reading '{attr}'"):
        fn = getattr(module, attr, None)
    if fn is None:
        raise FxpgaError(f"{path}: has no attribute '{attr}'")
    if not callable(fn):
        raise FxpgaError(f"{path}: '{attr}' is not callable")
    with _user_code(f"{path}: {attr}()"):
        model = fn()
    if not isinstance(model, nn.Module):
        raise FxpgaError(f"{path}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        state = load_state_dict(weights)
        with _user_code(f"{path}: loading {weights} into {attr}()"):
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                first = str(e).splitlines()[1:2] or str(e).splitlines()[:1]
                raise FxpgaError(f"{weights}: does not match {attr}(): {first[0].strip()}") from e
    with _user_code(f"{path}: {attr}().eval()"):
        return model.eval()


def load_state_dict(path: str) -> dict:
    """A state_dict file, read with ``torch.load(weights_only=True)``: tensors and plain
    containers only, no pickled objects."""
    p = Path(path)
    if not p.is_file():
        raise FxpgaError(f"{path}: no such weights file")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FxpgaError(
            f"{path}: cannot load as weights (torch.load weights_only=True): {_first_line(e)}"
        ) from e
    if not isinstance(sd, dict):
        raise FxpgaError(
            f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}"
        )
    return sd
