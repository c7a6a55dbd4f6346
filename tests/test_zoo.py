"""The built-in models and bundled datasets: what bench/ and the docs quote rests on them."""

import hashlib
import json
import re

import numpy as np
import pytest

from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.quant import data, frontend, quantizer, zoo


def test_digits16_is_digits_upscaled(digits):
    d16 = data.load("digits16")
    assert d16.name == "digits16" and d16.sample_shape == (1, 16, 16)
    assert np.array_equal(d16.y_test, digits.y_test) and np.array_equal(d16.y_train, digits.y_train)
    assert len(d16.x_calib) == len(digits.x_calib) and len(d16.x_train) == len(digits.x_train)
    assert d16.x_test.dtype == np.float32 and d16.x_test.min() >= 0 and d16.x_test.max() <= 1
    # bilinear with half-pixel centres: output pixel 6 sits at source coordinate
    # (6 + 0.5) / 2 - 0.5 = 2.75, so it weighs source pixels 2 and 3 by 1/4 and 3/4
    src, up = digits.x_test[7, 0], d16.x_test[7, 0]
    k = np.array([[1, 3], [3, 9]]) / 16
    expect = k[0, 0] * src[2, 2] + k[0, 1] * src[2, 3] + k[1, 0] * src[3, 2] + k[1, 1] * src[3, 3]
    assert up[6, 6] == pytest.approx(expect, abs=1e-6)


def test_unknown_dataset():
    with pytest.raises(
        FxpgaError, match="unknown dataset .mnist.: use digits, digits16, noise:CxHxW"
    ):
        data.load("mnist")


def test_digits_vgg_maps_onto_the_engine():
    model, ds_name = zoo.builtin("digits-vgg")
    ds = data.load(ds_name)
    graph = frontend.from_module(model, ds.sample_shape)
    assert [n.op for n in graph.weighted()] == ["conv"] * 5 + ["linear"] * 2
    assert quantizer.float_accuracy(graph, ds.x_test, ds.y_test) >= 0.97
    qm = quantizer.quantize_model(graph, ds.x_calib[:64], quantizer.Widths(8))
    prog = compiler.compile_model(qm, compiler.EngineConfig.for_model(qm, 8))
    assert prog.total_macs == graph.macs() == 1_823_360 and len(prog.ops) == 7


@pytest.mark.parametrize("name", list(zoo.BUILTIN))
def test_builtin_weights_are_shipped_not_trained(name, tmp_path, monkeypatch):
    """The weights come from the package (sha256 as the manifest says), whatever the cache;
    nothing trains, and the manifest's float top-1 is what they give."""
    monkeypatch.setenv("FXPGA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("builtin() trained"))
    man = zoo.manifest(name)
    assert (
        man["model"] == name
        and man["seed"] == zoo.SEED
        and man["command"].startswith(f"fxpga train {name} ")
    )
    assert {"torch", "date", "epochs", "sha256", "float_top1_test"} <= set(man)
    model, ds_name = zoo.builtin(name)
    assert not (tmp_path / "cache").exists()
    ds = data.load(ds_name)
    assert zoo.float_accuracy(model, ds.x_test, ds.y_test) == man["float_top1_test"]
    assert not model.training


def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch):
    src = zoo.weights_path("digits-cnn")
    (tmp_path / "digits-cnn.json").write_bytes(src.with_suffix(".json").read_bytes())
    blob = bytearray(src.read_bytes())
    blob[len(blob) // 2] ^= 1
    (tmp_path / "digits-cnn.npz").write_bytes(bytes(blob))
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    with pytest.raises(FxpgaError, match=r"digits-cnn.npz: sha256 differs from its manifest"):
        zoo.builtin("digits-cnn")


def test_train_writes_weights_and_manifest_and_compares(tmp_path, capsys):
    """One epoch: the .npz and its manifest are written, the comparison with the shipped
    weights is printed, and quantize takes the result through --weights."""
    from fxpga.cli import main

    out = tmp_path / "cnn.npz"
    assert main(["train", "digits-cnn", "--epochs", "1", "-o", str(out), "-q"]) == 0
    stdout = capsys.readouterr().out
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["epochs"] == 1 and man["command"] == "fxpga train digits-cnn --epochs 1 -o cnn.npz"
    assert man["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"float top-1 on digits test (500 images): {100 * man['float_top1_test']:.1f}%" in (
        stdout
    )
    dmax = float(re.search(r"largest \|Δw\| against the shipped weights: (\S+)", stdout)[1])
    shipped, _ = zoo.builtin("digits-cnn")
    mine, _ = zoo.builtin("digits-cnn", weights=out)
    want = max(
        float((mine.state_dict()[k] - v).abs().max())
        for k, v in shipped.state_dict().items()
        if v.is_floating_point()
    )
    assert dmax == pytest.approx(want, rel=1e-3) and dmax > 0
    fxq = tmp_path / "m.fxq"
    assert main(["quantize", "digits-cnn", "--weights", str(out), "-o", str(fxq), "-q"]) == 0
    assert json.loads(fxq.read_text())["provenance"]["weights"]["sha256"] == man["sha256"]


def test_train_errors(tmp_path, capsys):
    from test_cli import assert_one_line_error, run

    for argv, msg, code in [
        (["train", "resnet9000", "-o", str(tmp_path / "w.npz")], "invalid choice: 'resnet9000'", 2),
        (["train", "digits-cnn", "--epochs", "0", "-o", str(tmp_path / "w.npz")], "1..1000", 2),
        (["train", "digits-cnn", "-o", str(tmp_path / "w.pt")], "must end in .npz", 1),
    ]:
        got, _, err = run(capsys, *argv)
        assert_one_line_error(got, err, msg, code)
    assert list(tmp_path.iterdir()) == []


def test_results_md_quotes_the_shipped_digits_cnn(digits_graph, digits_q8, digits):
    """docs/RESULTS.md's top-1 for digits-cnn (float and 8-bit dynamic, as `fxpga quantize
    digits-cnn` prints them) is what the shipped weights give: the docs are not one machine's
    training run."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md").read_text()
    rows = {}  # the first table with these row names: the top-1 table
    for line in doc.splitlines():
        if line.startswith("| ") and len(cells := line.split("|")) > 3:
            rows.setdefault(cells[1].strip(), cells[2].strip())
    f = quantizer.float_accuracy(digits_graph, digits.x_test, digits.y_test)
    q = quantizer.accuracy(digits_q8, digits.x_test, digits.y_test)
    assert rows["float (folded BN)"] == f"{100 * f:.2f}"
    assert rows["8-bit dynamic"] == f"{100 * q:.2f}"


def test_quantize_is_the_same_on_any_thread_count(digits, tmp_path):
    """The shipped weights through `fxpga quantize`: the same integers and formats with 1 or
    2 torch threads (whatever the cache: nothing is trained or cached)."""
    import torch

    from fxpga.cli import main

    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = tmp_path / f"t{n}.fxq"
            assert main(["quantize", "digits-cnn", "-o", str(out), "-q"]) == 0
            got.append(out)
    finally:
        torch.set_num_threads(threads)
    # the contract (formats, shifts, ranges); the float statistics may differ in the last bits
    a, b = (
        [
            {k: v for k, v in la.items() if k != "stats"}
            for la in json.loads(p.read_text())["layers"]
        ]
        for p in got
    )
    assert a == b
    with np.load(str(got[0]) + ".npz") as za, np.load(str(got[1]) + ".npz") as zb:
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files)


@pytest.mark.parametrize("name", zoo.HARDWARE_ONLY)
def test_hardware_only_models_are_seeded_alike_everywhere(name):
    """The MLPerf Tiny models' weights and BN statistics are drawn from numpy's frozen
    RandomState stream; the digest pins them, so every machine quantizes the same model."""
    from fxpga.quant import mlperf_tiny

    model, ds_name = zoo.builtin(name)
    assert ds_name == "noise:" + "x".join(map(str, mlperf_tiny.MODELS[name][0].input_shape))
    state = model.state_dict()
    assert zoo.state_digest(state) == zoo.SEEDED_SHA256[name]
    bn = [k for k in state if k.endswith("running_var")]
    assert bn and all(float(state[k].min()) >= 0.5 and float(state[k].max()) <= 2 for k in bn)
    assert zoo.state_digest(zoo.seeded_state(model, zoo.SEEDED_SEED + 1)) != zoo.SEEDED_SHA256[name]


def test_hardware_only_models_are_not_trained(monkeypatch):
    with pytest.raises(FxpgaError, match="'ds-cnn' is a hardware-only benchmark .* no data set"):
        zoo.train("ds-cnn")
    monkeypatch.setattr(
        zoo, "seeded_state", lambda m, seed=0: {k: v * 2 for k, v in m.state_dict().items()}
    )
    with pytest.raises(FxpgaError, match="'fc-ae': the seeded weights differ"):
        zoo.builtin("fc-ae")


def test_noise_data_is_seeded_and_unlabelled():
    a, b = data.load("noise:3x8x8"), data.load("noise:3x8x8")
    assert a.sample_shape == (3, 8, 8) and not a.labelled
    assert np.array_equal(a.x_calib, b.x_calib) and -1 <= a.x_test.min() < a.x_test.max() < 1
    assert data.load("noise:640").sample_shape == (640,)
    for bad in ("noise:3x", "noise:1x2x3x4", "noise:0x8"):
        with pytest.raises(FxpgaError, match="noise"):
            data.load(bad)


def test_mac_counts_agree_with_torch_hooks():
    """``Graph.macs`` (depthwise and residual graphs included) against the hook count in
    mlperf_tiny, which sees torch's modules, not the IR."""
    from fxpga.quant import mlperf_tiny

    for name in ("digits-resnet", "digits-dsnet", "resnet8", "ds-cnn"):
        model, ds_name = zoo.builtin(name)
        shape = data.load(ds_name).sample_shape
        assert frontend.from_module(model, shape).macs() == mlperf_tiny.macs(model, shape), name
