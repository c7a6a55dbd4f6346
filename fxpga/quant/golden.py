"""The golden model: the integer every later stage (engine, cocotb, board) must reproduce.

Vectorised numpy over a batch. Per layer (docs/numerics.md):

- conv/linear: ``acc = Σ x·w + b`` exactly (int64, or Python integers when the recorded
  accumulator width exceeds 62 bits), then ``requantize(acc, shift, out_bits)``: rounding
  shift (round half up; one shift per output channel where the weights have per-channel
  formats) and saturation, to ``[0, 2^bits − 1]`` where the output format is
  unsigned.
- relu: ``max(x, 0)``; clip: ``clip(x, qlo, qhi)``, the representable values in [lo, hi];
  maxpool: window max, padding never wins (pads with the format's minimum);
  avgpool: window sum with zero padding, ``floor(sum/k + 1/2)`` for a k-element window;
  pad: zeros; flatten: C-order reshape.
- add: each input aligned to the output format (``requantize`` by ``fl_in − fl_out``: rounding
  shift and saturation; for an unsigned output, to the signed word one bit wider), summed,
  and the sum saturated; concat: each input aligned the same
  way, then joined along channels.
"""

from __future__ import annotations

import numpy as np

from . import ir
from .qformat import (
    QFormat,
    avg_round,
    clip_bounds,
    quantize,
    requantize,
    requantize_channels,
    saturate,
)
from .qmodel import QLayer, QModel

INT64_SAFE_BITS = 62  # acc plus the rounding constant stays inside int64


def _windows(x: np.ndarray, kernel, stride, padding, pad_value) -> np.ndarray:
    """(N, C, H, W) → (N, C, OH, OW, KH, KW) view of every window."""
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1]]


def conv_acc(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride, padding, groups: int = 1
) -> np.ndarray:
    """Exact accumulators of a convolution: (N, C, H, W) ints → (N, O, OH, OW). With
    ``groups``, output channel block ``g`` (``O / groups`` of them) sums over input channel
    block ``g`` only (``w``: (O, C / groups, KH, KW))."""
    win = _windows(x, w.shape[2:], stride, padding, 0)  # (N, C, OH, OW, KH, KW)
    ci, co = w.shape[1], w.shape[0] // groups
    if groups > 1 and ci == 1:  # depthwise: output g·co + j reads input channel g alone
        n, c, oh, ow = win.shape[:4]
        if co == 1:
            acc = np.einsum("nchwij,cij->nchw", win, w[:, 0])
        else:
            acc = np.einsum("nchwij,cmij->ncmhw", win, w.reshape(c, co, *w.shape[2:]))
        return acc.reshape(n, c * co, oh, ow) + b.reshape(1, -1, 1, 1)
    parts = [
        np.tensordot(
            win[:, g * ci : (g + 1) * ci], w[g * co : (g + 1) * co], axes=([1, 4, 5], [1, 2, 3])
        )
        for g in range(groups)
    ]  # each (N, OH, OW, O / groups)
    acc = parts[0] if groups == 1 else np.concatenate(parts, axis=3)
    return np.moveaxis(acc, 3, 1) + b.reshape(1, -1, 1, 1)


def linear_acc(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w.T + b


def maxpool(x, kernel, stride, padding, pad_value) -> np.ndarray:
    return _windows(x, kernel, stride, padding, pad_value).max(axis=(4, 5))


def avgpool(x, kernel, stride, padding) -> np.ndarray:
    total = _windows(x, kernel, stride, padding, 0).sum(axis=(4, 5))
    return avg_round(total, kernel[0] * kernel[1])


def accumulate(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """The exact accumulator of a conv/linear layer on integer input ``x``."""
    wide = layer.acc_bits > INT64_SAFE_BITS
    dt = object if wide else np.int64
    x = x.astype(dt)
    w, b = layer.w.astype(dt), layer.b.astype(dt)
    if isinstance(layer.node, ir.Conv):
        return conv_acc(x, w, b, layer.node.stride, layer.node.padding, layer.node.groups)
    return linear_acc(x, w, b)


def add_operand_fmt(out: QFormat) -> QFormat:
    """The format an add's operands are aligned to before they are summed: the output's, or
    for an unsigned output the signed word one bit wider, so that a negative operand still
    counts against the others until the sum is saturated."""
    return out if out.signed else QFormat(out.bits + 1, out.fl)


def align(x: np.ndarray, src: QFormat, dst: QFormat) -> np.ndarray:
    """An integer of format ``src`` on ``dst``'s grid: rounding shift, then saturation."""
    x = np.asarray(x, dtype=np.int64)
    return requantize(x, src.fl - dst.fl, dst.bits, dst.signed).astype(np.int64)


def step(layer: QLayer, *xs: np.ndarray) -> np.ndarray:
    """One layer of the golden model on a batch of integers (one array per input)."""
    n = layer.node
    if isinstance(n, ir.Add | ir.Concat):
        o = layer.out_fmt
        to = o if isinstance(n, ir.Concat) else add_operand_fmt(o)
        parts = [align(x, f, to) for x, f in zip(xs, layer.in_fmts, strict=True)]
        if isinstance(n, ir.Concat):
            return np.concatenate(parts, axis=1)
        return saturate(sum(parts[1:], parts[0]), o.bits, o.signed)
    (x,) = xs
    if isinstance(n, ir.Conv | ir.Linear):
        fmt = layer.out_fmt
        return requantize_channels(accumulate(layer, x), layer.shifts, fmt.bits, fmt.signed)
    if isinstance(n, ir.ReLU):
        return np.maximum(x, 0)
    if isinstance(n, ir.Pad):
        left, right, top, bottom = n.pads
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    if isinstance(n, ir.Clip):
        return np.clip(x, *clip_bounds(layer.in_fmt, n.lo, n.hi))
    if isinstance(n, ir.MaxPool):
        return maxpool(x, n.kernel, n.stride, n.padding, layer.in_fmt.qmin)
    if isinstance(n, ir.AvgPool):
        return avgpool(x, n.kernel, n.stride, n.padding)
    if isinstance(n, ir.Flatten):
        return x.reshape(len(x), -1)
    raise TypeError(f"golden model has no rule for op '{n.op}'")


def quantize_input(qm: QModel, x: np.ndarray) -> np.ndarray:
    return quantize(x, qm.input_fmt)


def run_int(qm: QModel, x_int: np.ndarray, keep: bool = False, batch: int = 4096):
    """Run on integer inputs. Returns the integer output, or with ``keep`` a dict of every
    layer's integer output by name (``"input"`` included), to locate mismatches."""
    x_int = np.asarray(x_int, dtype=np.int64)
    outs: dict[str, list[np.ndarray]] = {ir.INPUT: [x_int]}
    finals = []
    last_use = qm.graph.last_use()
    for i in range(0, max(len(x_int), 1), batch):
        env = {ir.INPUT: x_int[i : i + batch]}
        for k, layer in enumerate(qm.layers):
            t = env[layer.name] = step(layer, *(env[j] for j in layer.node.inputs))
            if keep:
                outs.setdefault(layer.name, []).append(t)
            for j in last_use.get(k, ()):
                del env[j]  # read by no later layer
        finals.append(t)
    if keep:
        return {k: np.concatenate(v) for k, v in outs.items()}
    return np.concatenate(finals)


def run(qm: QModel, x: np.ndarray, keep: bool = False):
    """Quantize float inputs with the model's input format, then ``run_int``."""
    return run_int(qm, quantize_input(qm, x), keep=keep)


def predict(qm: QModel, x: np.ndarray) -> np.ndarray:
    """Top-1 class per sample (first maximum on ties)."""
    out = run(qm, x)
    return out.reshape(len(out), -1).argmax(axis=1)
