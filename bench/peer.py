"""fxpga's fixed point beside a standard int8 post-training flow, on trained networks.

The peer is onnxruntime's ``quantize_static`` (QDQ, int8 weights and activations, MinMax
calibration), per channel and per tensor, on the same float ONNX, the same calibration inputs
and the same test inputs as fxpga. The figure is top-1 agreement with the float model (its
own argmax is the label), with the SQNR of the logits against float's; for the autoencoder,
which is not a classifier, the SQNR of its output. Accuracy against labels where there are
labels.

    python bench/peer.py            # prints the table, updates docs/RESULTS.md

Models: the trained MLPerf Tiny VWW and KWS networks in ../shared/mlperf_tiny (inputs from
bench/realdata.py), the MLPerf Tiny AD autoencoder trained here (``autoencoder``), and fxpga's
trained digits models (exported to ONNX here).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import realdata  # noqa: E402
from results import machine, markdown_table, update_section  # noqa: E402

from fxpga.quant import data, golden, mlperf_tiny, onnx_import, quantizer, zoo  # noqa: E402
from fxpga.quant.qformat import dequantize  # noqa: E402

CALIB, TEST = 256, 500


@dataclass
class Case:
    name: str
    onnx: Path
    calib: np.ndarray
    test: np.ndarray
    labels: np.ndarray | None = None
    nonnegative: bool = False  # the inputs are declared non-negative
    classifier: bool = True  # else the figure is the output's SQNR against float, in dB


def score(case: Case, ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement of ``got`` with the float outputs ``ref`` (NaN for a model that is not
    a classifier), and the SQNR of ``got`` against them (dB)."""
    agree = float((got.argmax(1) == ref.argmax(1)).mean()) if case.classifier else math.nan
    return agree, quantizer.sqnr_db(ref, got)


def ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    outs = [s.run(None, {inp.name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).reshape(len(x), -1)


def without_softmax(path: Path, work: Path) -> Path:
    """The ONNX model at ``path`` ending at its logits: a final Softmax (which fxpga leaves to
    the host) removed, so that outputs compare as fxpga's do."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    last = g.node[-1]
    if last.op_type != "Softmax" or [o.name for o in g.output] != list(last.output):
        return path
    g.node.remove(last)
    g.output[0].name = last.input[0]  # the logits have the probabilities' type and shape
    dst = work / f"{path.stem}-logits.onnx"
    onnx.save(model, str(dst))
    return dst


def ort_int8(case: Case, per_channel: bool, work: Path) -> np.ndarray:
    """The test outputs of onnxruntime's int8 QDQ model of ``case``."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inp = ort.InferenceSession(str(case.onnx), providers=["CPUExecutionProvider"]).get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(0, len(case.calib), batch))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {inp.name: case.calib[i : i + batch]}

    import onnx
    from onnx import version_converter

    src = case.onnx
    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        src = work / f"{case.name}-opset13.onnx"
        onnx.save(version_converter.convert_version(model, 13), str(src))
    pre = work / f"{case.name}-pre.onnx"
    out = work / f"{case.name}-int8-{'pc' if per_channel else 'pt'}.onnx"
    quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    return ort_outputs(out, case.test)


# (column, widths, scheme, options): Qiu et al.'s scheme, the default scheme's options added
# one at a time, the default itself; unsigned also makes the input unsigned where the case's
# inputs are declared non-negative
CORRECTED = {"unsigned": True, "bias_correction": True}
CHANNELS = CORRECTED | {"per_channel": True}
SCHEMES = (
    ("fxpga 8-bit qiu", quantizer.Widths(8), "qiu", {}),
    ("+ unsigned, bias corrected", quantizer.Widths(8), "qiu", CORRECTED),
    ("+ per-channel weights", quantizer.Widths(8), "qiu", CHANNELS),
    ("+ l2 objective", quantizer.Widths(8), "qiu", CHANNELS | {"objective": "l2"}),
    ("+ output objective: the default", quantizer.Widths(8), "dynamic", {}),
    ("the default + gptq rounding", quantizer.Widths(8), "dynamic", {"rounding": "gptq"}),
    ("the default at 8/4", quantizer.Widths(8, 8, 4), "dynamic", {}),
    ("fxpga 8/4 qiu", quantizer.Widths(8, 8, 4), "qiu", {}),
    ("fxpga 8-bit static", quantizer.Widths(8), "static", {}),
    ("fxpga 16-bit qiu", quantizer.Widths(16), "qiu", {}),
)
BEST_LABEL = "+ output objective: the default"


def measure(case: Case, work: Path) -> dict[str, float]:
    case = dataclasses.replace(case, onnx=without_softmax(case.onnx, work))
    ref = ort_outputs(case.onnx, case.test)
    want = ref.argmax(1)
    g = onnx_import.from_onnx(case.onnx)
    fx_float = g.float_forward(case.test.astype(np.float64)).reshape(len(case.test), -1)
    same = quantizer.sqnr_db(ref, fx_float)
    assert same > 60, f"{case.name}: fxpga's float differs from onnxruntime's ({same:.1f} dB)"
    row = {}
    if case.labels is not None:
        row["float accuracy"] = float((want == case.labels).mean())
    for label, widths, scheme, options in SCHEMES:
        t = time.perf_counter()
        unsigned = options.get("unsigned", quantizer.SCHEMES[scheme].unsigned)
        qm = quantizer.quantize_model(
            g, case.calib, widths, scheme, **options,
            input_unsigned=unsigned and case.nonnegative,
        )  # fmt: skip
        got = golden.run(qm, case.test).reshape(len(case.test), -1)
        row[label] = score(case, ref, dequantize(got, qm.output_fmt.fl))
        row[f"{label} s"] = time.perf_counter() - t
    for per_channel in (True, False):
        got = ort_int8(case, per_channel, work)
        row[f"onnxruntime int8 {'per-channel' if per_channel else 'per-tensor'}"] = score(
            case, ref, got
        )
    return row


def export_digits(name: str, work: Path) -> Case:
    import torch

    model, ds_name = zoo.builtin(name)
    ds = data.load(ds_name)
    path = work / f"{name}.onnx"
    x = torch.zeros(1, *ds.sample_shape)
    torch.onnx.export(
        model.eval(), (x,), str(path), dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )  # fmt: skip
    return Case(name, path, ds.calib(CALIB).astype(np.float32), ds.x_test.astype(np.float32),
                ds.y_test, nonnegative=bool(ds.x_test.min() >= 0))  # fmt: skip


AE_TRAIN = {"clips": 40, "seed": 10, "epochs": 30, "batch": 512, "lr": 1e-3, "torch_seed": 0}


def autoencoder(work: Path) -> Case:
    """The MLPerf Tiny anomaly-detection autoencoder, trained here as the reference trains
    it (Adam, MSE, batch 512) on normal machine sound (bench/realdata.py), its weights cached
    in bench/.data; calibrated on normal clips, tested on clips half of which are faulty."""
    import torch
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    # keyed by the training recipe, the data's and the model's definition
    recipe = repr(
        (
            sorted(AE_TRAIN.items()),
            inspect.getsource(realdata._ad),
            inspect.getsource(realdata.machine),
            repr(mlperf_tiny.FCAutoencoder()),
        )
    )
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    path = realdata.CACHE / f"fc-ae-{key}.npz"
    model = mlperf_tiny.FCAutoencoder()
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    else:
        x = torch.from_numpy(realdata.ad(AE_TRAIN["clips"], AE_TRAIN["seed"]))
        torch.manual_seed(AE_TRAIN["torch_seed"])
        opt = torch.optim.Adam(model.parameters(), lr=AE_TRAIN["lr"])
        model.train()
        for _ in range(AE_TRAIN["epochs"]):
            for idx in torch.randperm(len(x)).split(AE_TRAIN["batch"]):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[idx]), x[idx])
                loss.backward()
                opt.step()
        realdata.CACHE.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=realdata.CACHE, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in model.state_dict().items()})
        os.replace(tmp, path)
    model.eval()
    # BatchNorm folded before the export, as fxpga folds it: onnxruntime does not fuse a
    # BatchNormalization into the Gemm before it, and would quantize it on its own
    layers = list(model.body)
    for i, m in enumerate(layers):
        if isinstance(m, torch.nn.BatchNorm1d):
            layers[i - 1], layers[i] = fuse_linear_bn_eval(layers[i - 1], m), torch.nn.Identity()
    model.body = torch.nn.Sequential(*layers)
    onnx_path = work / "fc-ae.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 640),), str(onnx_path), dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    calib, test = realdata.ad(8, 1), realdata.ad(10, 2, anomalous=0.5)
    return Case(
        "fc-ae (anomaly detection)", onnx_path,
        calib[rng.choice(len(calib), CALIB, replace=False)],
        test[rng.choice(len(test), TEST, replace=False)], classifier=False,
    )  # fmt: skip


def cases(work: Path, which: set[str]) -> list[Case]:
    out = []
    if "vww" in which:
        out.append(Case(
            "vww-mobilenetv1-0.25", realdata.SHARED / "vww_mobilenetv1_025.onnx",
            realdata.vww(CALIB, 1), realdata.vww(TEST, 2), nonnegative=True,
        ))  # fmt: skip
    if "kws" in which:
        x_c, _ = realdata.kws(CALIB, 1)
        x_t, y_t = realdata.kws(TEST, 2)
        out.append(Case("kws-ds-cnn", realdata.SHARED / "kws_dscnn.onnx", x_c, x_t, y_t))
    if "fc-ae" in which:
        out.append(autoencoder(work))
    for name in ("digits-resnet", "digits-dsnet"):
        if name in which:
            out.append(export_digits(name, work))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vww,kws,fc-ae,digits-resnet,digits-dsnet")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the quantization times are on one core
    which = set(args.models.split(","))
    if not realdata.SHARED.is_dir():
        which -= {"vww", "kws"}
        print(f"note: {realdata.SHARED} is absent: the MLPerf Tiny models are skipped")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(Path(tmp), which):
            rows[case.name] = measure(case, Path(tmp))
            print(case.name, rows[case.name], flush=True)
    cols = [c for c, *_ in SCHEMES] + [
        "onnxruntime int8 per-channel", "onnxruntime int8 per-tensor",
    ]  # fmt: skip

    def cell(agree: float, db: float) -> str:
        return f"{db:.1f} dB" if math.isnan(agree) else f"{100 * agree:.1f}% · {db:.1f} dB"

    table = [
        [name, f"{100 * r['float accuracy']:.1f}%" if "float accuracy" in r else "",
         *(cell(*r[c]) for c in cols)]
        for name, r in rows.items()
    ]  # fmt: skip
    text = "\n".join([
        "## fxpga's fixed point beside onnxruntime's int8 (`python bench/peer.py`)",
        "",
        f"{CALIB} calibration and {TEST} test inputs per model, the same for every column; top-1 "
        "agreement with the float model and the SQNR of the output (the logits) against "
        "float's over the test set (for the autoencoder, which is not a classifier, the SQNR "
        f"alone). One input is {100 / TEST:.1f} pt of agreement. VWW: crops of scikit-image's "
        "photos; KWS: espeak-ng keywords as MFCCs; fc-ae: "
        "the MLPerf Tiny AD autoencoder trained here (Adam, MSE, "
        f"{AE_TRAIN['epochs']} epochs) on log-mel frames of synthetic machine sound, tested on "
        "clips half of which are faulty (bench/realdata.py); digits: the held-out digits. "
        "onnxruntime: "
        "`quantize_static`, QDQ, int8 weights and activations, MinMax. `qiu`: Qiu et al.'s "
        "scheme (`--scheme qiu`). Each `+` column adds to the one before it: unsigned "
        "activations (the input too where the data is non-negative) and bias correction, "
        "then a weight fl per output channel, then the l2 search objective, then the output "
        "objective (each activation's fl scored at the network's output), which is the "
        "default scheme (`dynamic`). The engine runs every column.",
        "",
        markdown_table(["model", "float top-1 (labels)", *cols], table),
        "",
        "Quantization time on one core, Qiu / " + BEST_LABEL + ": " + ", ".join(
            f"{name} {r[SCHEMES[0][0] + ' s']:.0f} s / {r[BEST_LABEL + ' s']:.0f} s"
            for name, r in rows.items()
        ) + ".",
        "",
        f"Measured on {machine()}.",
    ])  # fmt: skip
    print(text)
    if not args.no_write:
        update_section("peer", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
