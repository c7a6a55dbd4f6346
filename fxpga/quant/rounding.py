"""Weight rounding chosen against a layer's output error (GPTQ, Frantar et al., ICLR 2023,
after Optimal Brain Quantization): the same formats as round-to-nearest, other integers.

For a layer ``y = W x`` and its quantized inputs ``X`` on the calibration set, the integers
``Q`` minimise (greedily, one input column at a time) ``‖(W − Q·2^-fl) X‖²`` rather than
``‖W − Q·2^-fl‖²``: each column is rounded to nearest on its channel's grid and saturated, and
the error it leaves is spread over the columns not yet rounded, in proportion to the inverse
of ``H = X Xᵀ``. A convolution's ``x`` is its receptive field (the ``C/groups · KH · KW``
values one output reads), so each group of channels has its own ``H``.
"""

from __future__ import annotations

import numpy as np

from ..errors import FxpgaError
from . import golden, ir

# the dampening added to H's diagonal, as a share of its mean: keeps H invertible where the
# inputs are few or correlated (Frantar et al.'s value)
DAMP = 0.01
STEP_VALUES = 1 << 22  # receptive-field values per step of H's sum (32 MiB of float64)
# the inputs one output reads, at most: H and its factors are K×K float64 (128 MiB each at
# the bound), and the rounding loop is O(O·K²)
MAX_K = 4096


def hessians(node: ir.Node, x: np.ndarray) -> np.ndarray:
    """``H = Σ x xᵀ`` over the calibration set, per group: (groups, K, K), for the integer
    input ``x`` of a conv (K = C/groups·KH·KW, in the weights' flattening order) or a linear
    layer (one group, K = its inputs)."""
    k = node.weight[0].size
    if k > MAX_K:
        raise FxpgaError(
            f"{node.where()}: GPTQ rounding takes layers of at most {MAX_K:,} inputs per "
            f"output, this one has {k:,} (use --rounding nearest)"
        )
    if isinstance(node, ir.Linear):
        xf = x.reshape(len(x), -1).astype(np.float64)
        return (xf.T @ xf)[None]
    groups = node.groups
    ci = node.weight.shape[1]
    h = np.zeros((groups, k, k))
    batch = max(1, STEP_VALUES // (groups * k * node.out_shape[1] * node.out_shape[2]))
    for i in range(0, len(x), batch):  # (N, C, OH, OW, KH, KW) windows
        win = golden._windows(
            x[i : i + batch].astype(np.float64),
            node.weight.shape[2:],
            node.stride,
            node.padding,
            0,
        )
        n, _, oh, ow, kh, kw = win.shape
        # (groups, rows, K): a group's receptive fields, in (c, kh, kw) order
        r = win.reshape(n, groups, ci, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
        r = r.reshape(groups, n * oh * ow, k)
        h += np.einsum("grk,grl->gkl", r, r)
    return h


def gptq(w: np.ndarray, h: np.ndarray, fls: np.ndarray, bits: int) -> np.ndarray:
    """The integer weights for float ``w`` (O, K) of one group, each row on the grid
    ``2^-fls[o]`` in signed ``bits``, that GPTQ picks against ``H`` (K, K)."""
    w = np.array(w, dtype=np.float64)
    o, k = w.shape
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = np.ldexp(1.0, np.asarray(fls, dtype=np.int64))  # integers per unit, per row
    h = np.array(h, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0  # an input that is always 0: its weights do not reach the output
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += DAMP * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")  # the inputs that matter most first
    h = h[np.ix_(order, order)]
    w = w[:, order]
    # the upper Cholesky factor of H⁻¹: row i gives how column i's error moves the later ones
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros((o, k), dtype=np.int64)
    for i in range(k):
        qi = np.clip(np.floor(w[:, i] * scale + 0.5), lo, hi)
        q[:, i] = qi
        err = (w[:, i] - qi / scale) / u[i, i]
        w[:, i + 1 :] -= np.outer(err, u[i, i + 1 :])
    out = np.empty_like(q)
    out[:, order] = q
    return out


def round_weights(node: ir.Node, x: np.ndarray, fls: np.ndarray, bits: int) -> np.ndarray:
    """The integer weights of conv/linear ``node`` (its ``weight``'s shape), each output
    channel ``o`` in ``QFormat(bits, fls[o])``, rounded against the output error on the
    integer input ``x``."""
    h = hessians(node, x)
    groups = len(h)
    w = node.weight.reshape(len(node.weight), -1)
    co = len(w) // groups
    fls = np.asarray(fls)
    parts = [
        gptq(w[g * co : (g + 1) * co], h[g], fls[g * co : (g + 1) * co], bits)
        for g in range(groups)
    ]
    return np.concatenate(parts).reshape(node.weight.shape)
