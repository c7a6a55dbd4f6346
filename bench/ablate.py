"""The default scheme with one option turned off at a time, on bench/peer.py's models and inputs.

    python bench/ablate.py [--models kws,vww]

Prints, per model, top-1 agreement with the float model and the output SQNR (dB) on the test
inputs for the default scheme and for each option switched off (needs what bench/peer.py
needs). Print only: docs/RESULTS.md keeps bench/peer.py's table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402
from results import markdown_table  # noqa: E402

from fxpga.quant import golden, onnx_import, quantizer  # noqa: E402
from fxpga.quant.qformat import dequantize  # noqa: E402

# (row, quantize_model arguments): the default, then each of its options off
VARIANTS = (
    ("the default scheme", {}),
    ("no bias correction", {"bias_correction": False}),
    ("l2 objective", {"objective": "l2"}),
    ("l1 objective", {"objective": "l1"}),
    ("no per-channel weights", {"per_channel": False}),
    ("no unsigned formats", {"unsigned": False}),
    ("gptq rounding on", {"rounding": "gptq"}),
)


def measure(case: peer.Case) -> list[list[str]]:
    g = onnx_import.from_onnx(case.onnx)
    ref = g.float_forward(case.test.astype(np.float64)).reshape(len(case.test), -1)
    rows = []
    for label, kw in VARIANTS:
        unsigned = kw.get("unsigned", True)
        qm = quantizer.quantize_model(
            g, case.calib, quantizer.Widths(8), input_unsigned=unsigned and case.nonnegative, **kw
        )
        out = golden.run(qm, case.test).reshape(len(case.test), -1)
        got = dequantize(out, qm.output_fmt.fl)
        agree, db = peer.score(case, ref, got)
        rows.append([case.name, label, f"{100 * agree:.1f}%", f"{db:.1f}"])
        print(*rows[-1], sep="  ", flush=True)
    return rows


def main() -> int:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="kws,vww")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for case in peer.cases(Path(d), set(args.models.split(","))):
            rows += measure(case)
    print(markdown_table(["model", "variant", "agreement with float", "output SQNR dB"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
