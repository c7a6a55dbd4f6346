"""The report's and docs/RESULTS.md's figures, as PNG bytes.

matplotlib's object API with the Agg canvas (no pyplot state, no display). PNGs carry no
software or date metadata, so the same data and matplotlib version give the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..quant.qformat import QFormat

DPI = 100
FLOAT_COLOR = "0.35"
RANGE_COLOR = "#9ecae1"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


@dataclass
class Tensor:
    """Values of one tensor (weights or a layer's output on calibration data) and its format."""

    layer: str
    kind: str  # "weights" or "output" (or "input")
    values: np.ndarray
    fmt: QFormat

    @property
    def lo(self) -> float:
        """log2 of the smallest non-zero magnitude the format holds (one step)."""
        return float(-self.fmt.fl)

    @property
    def hi(self) -> float:
        """log2 of the largest magnitude it holds (qmin's, -2^(bits-1) steps)."""
        return float(self.fmt.bits - 1 - self.fmt.fl)

    def fractions(self) -> tuple[float, float]:
        """Fractions of non-zero values that round to zero, and that saturate."""
        v = np.asarray(self.values, dtype=np.float64).ravel()
        v = v[v != 0]
        if v.size == 0:
            return 0.0, 0.0
        step = self.fmt.step
        zero = float(np.mean(np.abs(v) < step / 2))
        sat = float(np.mean((v > self.fmt.qmax * step) | (v < self.fmt.qmin * step)))
        return zero, sat


def profile(rows: list[list[Tensor]]) -> bytes:
    """hls4ml-style profiling: per layer (a row) and tensor (a column), a histogram of
    log2|x| over the non-zero values, with the format's representable magnitudes shaded."""
    ncols = max(len(r) for r in rows)
    fig = _figure(4.2 * ncols, 1.35 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), ncols, squeeze=False, sharex=True)
    every = [t for r in rows for t in r]
    logs = [np.log2(np.abs(t.values[t.values != 0])) for t in every]
    # x range: every format's band, and the values but their smallest 0.1% (a few tiny
    # weights far below any format would squash the rest)
    lo = min([t.lo for t in every] + [float(np.quantile(v, 0.001)) for v in logs if v.size]) - 1
    hi = max([t.hi for t in every] + [float(np.max(v)) for v in logs if v.size]) + 1
    bins = np.arange(np.floor(lo), np.ceil(hi) + 0.25, 0.25)
    for i, r in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(r):
                ax.set_axis_off()
                continue
            t = r[j]
            v = np.log2(np.abs(t.values[t.values != 0]).ravel())
            ax.axvspan(t.lo, t.hi, color=RANGE_COLOR, alpha=0.6, lw=0)
            ax.hist(
                np.clip(v, bins[0], bins[-1]),
                bins=bins,
                color=COLORS[0] if t.kind == "weights" else COLORS[2],
            )
            zero, sat = t.fractions()
            what = t.layer if t.kind == t.layer else f"{t.layer} {t.kind}"
            ax.set_title(
                f"{what}: {t.fmt!r}, {100 * zero:.1f}% → 0, {100 * sat:.1f}% sat.",
                fontsize=8,
                loc="left",
            )
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
    for ax in axes[-1]:
        ax.set_xlabel("log2 |x| (shaded: the format's range)", fontsize=8)
    return _png(fig)


def accuracy_vs_bits(
    curves: dict[str, dict[str, list[tuple[int, float]]]],
    floats: dict[str, float],
    marks: dict[str, tuple[int, float]] | None = None,
) -> bytes:
    """Top-1 against word width: one colour per model, solid dynamic, dashed static, the
    float top-1 dotted; ``marks`` a point per model (e.g. the chosen quantization)."""
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    for k, (model, by_scheme) in enumerate(curves.items()):
        c = COLORS[k % len(COLORS)]
        for scheme, pts in by_scheme.items():
            b, acc = zip(*pts, strict=True)
            ax.plot(
                b,
                [100 * a for a in acc],
                marker="o",
                ms=3,
                color=c,
                ls="-" if scheme == "dynamic" else "--",
                label=f"{model} {scheme}",
            )
        if model in floats:
            ax.axhline(100 * floats[model], color=c, ls=":", lw=1, label=f"{model} float")
        if marks and model in marks:
            mb, ma = marks[model]
            ax.plot([mb], [100 * ma], marker="*", ms=12, color=c, ls="none")
    allb = sorted({b for s in curves.values() for p in s.values() for b, _ in p})
    ax.set_xticks(allb)
    ax.set_xlabel("bits (activations and weights)")
    ax.set_ylabel("top-1 %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def cycle_breakdown(names: list[str], cycles: list[int], util: list[float], title: str) -> bytes:
    """Cycles per engine op as horizontal bars, labelled with MAC utilization."""
    fig = _figure(6.4, 0.42 * len(names) + 1.0)
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, cycles, color=COLORS[0])
    for yi, c, u in zip(y, cycles, util, strict=True):
        ax.text(c, yi, f" {c:,} ({100 * u:.0f}% MAC util.)", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, max(cycles) * 1.45)
    ax.set_xlabel("cycles")
    ax.set_title(title, fontsize=9, loc="left")
    return _png(fig)


def lanes_sweep(lanes: list[int], cycles: list[int], util: list[float], title: str) -> bytes:
    """Cycles per image (log scale) and MAC utilization against the number of lanes."""
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    ax.plot(lanes, cycles, marker="o", color=COLORS[0])
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lanes, [str(n) for n in lanes])
    ax.set_xlabel("lanes (MACs per cycle)")
    ax.set_ylabel("cycles per image", color=COLORS[0])
    ax2 = ax.twinx()
    ax2.plot(lanes, [100 * u for u in util], marker="s", color=COLORS[1])
    ax2.set_ylabel("MAC utilization %", color=COLORS[1])
    ax2.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9, loc="left")
    return _png(fig)
