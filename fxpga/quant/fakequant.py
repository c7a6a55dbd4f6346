"""Fake quantization in float64 torch: an independent path that must equal the golden model.

Every tensor is carried as its real value ``q · 2^-fl``; weights and biases are the stored
integers rescaled; after each conv/linear the value is snapped back to the output format with
``floor(y · 2^fl + 1/2)`` and clamped. Float64 holds every accumulator exactly while it stays
below 2^53, so for such models ``fake_run(qm, x) == golden.run(qm, x) · 2^-fl_out`` exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import ir
from .golden import add_operand_fmt
from .qformat import QFormat, clip_bounds
from .qmodel import QModel


def _snap(y: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    q = torch.floor(torch.ldexp(y, torch.tensor(float(fmt.fl), dtype=y.dtype)) + 0.5)
    q = q.clamp(fmt.qmin, fmt.qmax)
    return torch.ldexp(q, torch.tensor(float(-fmt.fl), dtype=y.dtype))


def fake_run(qm: QModel, x: np.ndarray, keep: bool = False):
    """Float64 fake-quantized forward; values are reals (not integers)."""
    outs = {}
    with torch.no_grad():
        t = _snap(torch.from_numpy(np.asarray(x, dtype=np.float64)), qm.input_fmt)
        env = {ir.INPUT: t}
        outs[ir.INPUT] = t.numpy()
        for la in qm.layers:
            n = la.node
            ins = [env[j] for j in n.inputs]
            t = ins[0]
            if isinstance(n, ir.Add):  # each input snapped to the operands' grid, then the sum
                to = add_operand_fmt(la.out_fmt)
                y = sum(_snap(v, to) for v in ins)
                lim = (la.out_fmt.qmin * la.out_fmt.step, la.out_fmt.qmax * la.out_fmt.step)
                t = y.clamp(*lim)
            elif isinstance(n, ir.Concat):
                t = torch.cat([_snap(v, la.out_fmt) for v in ins], dim=1)
            elif isinstance(n, ir.Conv | ir.Linear):
                w = torch.from_numpy(la.weight_values())
                b = torch.from_numpy(
                    np.ldexp(la.b.astype(np.float64), -(la.in_fmt.fl + la.w_fl_of))
                )
                if isinstance(n, ir.Conv):
                    y = F.conv2d(t, w, b, stride=n.stride, padding=n.padding, groups=n.groups)
                else:
                    y = F.linear(t, w, b)
                t = _snap(y, la.out_fmt)
            elif isinstance(n, ir.AvgPool):
                # the average of values on one grid, rounded half up on that grid
                y = F.avg_pool2d(t, n.kernel, n.stride, n.padding, count_include_pad=True)
                step = 2.0**-la.in_fmt.fl
                t = torch.floor(y / step + 0.5) * step
            elif isinstance(n, ir.Clip):  # the grid values inside [lo, hi]
                qlo, qhi = clip_bounds(la.in_fmt, n.lo, n.hi)
                step = 2.0**-la.in_fmt.fl
                t = t.clamp(qlo * step, qhi * step)
            elif isinstance(n, ir.MaxPool):
                t = F.max_pool2d(t, n.kernel, n.stride, n.padding)
            else:
                t = n.float_forward(t)
            env[n.name] = t
            outs[n.name] = t.numpy()
    return outs if keep else t.numpy()
