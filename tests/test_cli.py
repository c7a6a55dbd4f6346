"""The command line end to end, and every bad input: one line, non-zero exit, nothing written."""

import argparse
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from fxpga.cli import main
from fxpga.quant import artifact, golden

NET = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(x, 1))

class Odd(Net):
    def forward(self, x):
        x = torch.sigmoid(self.conv(x))
        return self.fc(torch.flatten(x, 1))

def make():
    return Net()

def odd():
    return Odd()

class Soft(Net):
    def forward(self, x):
        return torch.log_softmax(super().forward(x), dim=1)

def soft():
    return Soft()
"""


@pytest.fixture
def net(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(NET)
    return f


@pytest.fixture
def npz(tmp_path, digits):
    p = tmp_path / "d.npz"
    np.savez(p, x=digits.x_test[:40], y=digits.y_test[:40])
    return p


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern, expect=1):
    assert code == expect, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


def test_quantize_then_eval(tmp_path, capsys, digits_model, digits):
    out = tmp_path / "m.fxq"
    code, stdout, _ = run(capsys, "quantize", "digits-cnn", "-o", str(out), "-q")
    assert code == 0
    assert "conv1" in stdout and "W SQNR dB" in stdout and "top-1 on digits (500 images)" in stdout
    assert out.is_file() and (tmp_path / "m.fxq.npz").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    obj = json.loads(out.read_text())
    assert obj["schema"] == "fxpga.qmodel" and obj["provenance"]["dataset"] == "digits"
    assert obj["layers"][0]["acc_bits"] == obj["max_acc_bits"] or obj["max_acc_bits"] > 0
    code, stdout2, _ = run(capsys, "eval", str(out), "--data", "digits", "-q")
    assert code == 0
    assert stdout2.splitlines()[-1] == stdout.splitlines()[-2]  # same accuracy line
    code, stdout3, _ = run(capsys, "eval", str(out), "-q")  # the data set it records
    assert code == 0 and stdout3 == stdout2
    qm = artifact.load(out)
    assert golden.predict(qm, digits.x_test).shape == (500,)


def test_roundtrip_is_exact(tmp_path, digits_q8, digits):
    artifact.save(digits_q8, tmp_path / "a.fxq")
    qm = artifact.load(tmp_path / "a.fxq")
    np.testing.assert_array_equal(
        golden.run(qm, digits.x_test), golden.run(digits_q8, digits.x_test)
    )
    for a, b in zip(qm.layers, digits_q8.layers, strict=True):
        assert (a.in_fmt, a.out_fmt, a.w_fmt, a.acc_bits, a.shift) == (
            b.in_fmt,
            b.out_fmt,
            b.w_fmt,
            b.acc_bits,
            b.shift,
        )


def test_factory_model_with_npz_and_weights(tmp_path, capsys, net, npz):
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in nn.Module.state_dict(_net(net)).items()}
    torch.save(sd, tmp_path / "w.pt")
    code, stdout, err = run(
        capsys,
        "quantize",
        f"{net}:make",
        "--data",
        str(npz),
        "--weights",
        str(tmp_path / "w.pt"),
        "--bits",
        "6",
        "--scheme",
        "static",
        "--calib",
        "16",
        "-o",
        str(tmp_path / "n.fxq"),
    )
    assert code == 0, err
    obj = json.loads((tmp_path / "n.fxq").read_text())
    assert obj["provenance"]["calib_images"] == 16 and obj["scheme"] == "static"
    assert obj["layers"][0]["weight"]["bits"] == 6


def _net(path):
    from fxpga.quant import frontend

    return frontend.load_factory(f"{path}:make", None)


def test_export_archive(tmp_path, capsys, net, npz):
    model = _net(net)
    ep = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    torch.export.save(ep, tmp_path / "m.pt2")
    code, _, err = run(
        capsys,
        "quantize",
        str(tmp_path / "m.pt2"),
        "--data",
        str(npz),
        "-o",
        str(tmp_path / "e.fxq"),
        "-q",
    )
    assert code == 0, err
    names = [la["name"] for la in json.loads((tmp_path / "e.fxq").read_text())["layers"]]
    assert names[0] == "conv" and names[-1] == "fc"


def test_config_reapplies_edited_formats(tmp_path, capsys):
    run(capsys, "quantize", "digits-cnn", "-o", str(tmp_path / "a.fxq"), "-q")
    obj = json.loads((tmp_path / "a.fxq").read_text())
    obj["layers"][0]["output"]["fl"] -= 1
    (tmp_path / "edited.json").write_text(json.dumps(obj))
    code, _, err = run(
        capsys,
        "quantize",
        "digits-cnn",
        "--config",
        str(tmp_path / "edited.json"),
        "-o",
        str(tmp_path / "b.fxq"),
        "-q",
    )
    assert code == 0, err
    b = json.loads((tmp_path / "b.fxq").read_text())
    assert b["layers"][0]["output"]["fl"] == obj["layers"][0]["output"]["fl"]
    assert b["layers"][1]["format"]["fl"] == obj["layers"][0]["output"]["fl"]


BAD = [
    # (argv builder, expected substring, exit code)
    (
        lambda t, n, d: ["quantize", f"{n}:odd", "--data", str(d)],
        "node 'sigmoid' (call_function sigmoid) at net.py:17: sigmoid is supported only as the "
        "last op",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(d), "--weights", str(t / "nan.pt")],
        "node 'conv' (call_module conv) at net.py:12: weight has 36 non-finite value(s)",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "empty.npz")],
        "empty.npz: 'x' is empty",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "small.npz")],
        "does not accept inputs of shape (N, 1, 4, 4)",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--data", str(t / "small.npz")],
        "does not accept inputs of shape (N, 1, 4, 4)",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "threed.npz")],
        "'x' must be NCHW (4-D) or NF (2-D), got shape (5, 8, 8)",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "ylen.npz")],
        "'x' has 5 samples but 'y' has 4",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "pickle.npz")],
        "pickle.npz: refusing to load",
        1,
    ),
    (lambda t, n, d: ["quantize", "digits-cnn", "--bits", "1"], "bits must be in 2..32, got 1", 2),
    (lambda t, n, d: ["quantize", "digits-cnn", "--fc-bits", "33"], "bits must be in 2..32", 2),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--config", str(t / "unknown.json")],
        "unknown.json: unknown layer 'conv9'",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--config", str(t / "impossible.json")],
        "impossible.json: layer 'fc1' weight: bits must be in 2..32, not 40",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--config", str(t / "broken.json")],
        "broken.json:3: invalid JSON",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--config", str(t / "nope.json")],
        "nope.json: no such file",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{t}/missing.py:make", "--data", str(d)],
        "missing.py: no such file",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "missing.npz")],
        "missing.npz: no such dataset file",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(d), "--weights", str(t / "no.pt")],
        "no.pt: no such weights file",
        1,
    ),
    (
        lambda t, n, d: ["quantize", f"{n}:make", "--data", str(t / "labels.npz")],
        "labels.npz: label y[3] = 57 is not a class of the model (it has 10 outputs",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--weights", str(t / "vgg.npz")],
        "vgg.npz: does not fit the 'digits-cnn' definition",
        1,
    ),
    (
        lambda t, n, d: ["quantize", "digits-cnn", "--weights", str(t / "nan.pt")],
        "nan.pt: not a readable weights .npz",
        1,
    ),
    (lambda t, n, d: ["quantize", f"{n}:make"], "--data is required", 1),
    (
        lambda t, n, d: ["quantize", "resnet9000", "--data", "digits"],
        "cannot interpret model 'resnet9000'",
        1,
    ),
    (
        lambda t, n, d: ["quantize", str(t / "missing.pt2"), "--data", "digits"],
        "missing.pt2: no such file",
        1,
    ),
]


@pytest.fixture
def bad_files(tmp_path, digits):
    torch.save(
        {
            "conv.weight": torch.full((4, 1, 3, 3), float("nan")),
            "conv.bias": torch.zeros(4),
            "fc.weight": torch.zeros(10, 256),
            "fc.bias": torch.zeros(10),
        },
        tmp_path / "nan.pt",
    )
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(tmp_path / "small.npz", x=np.zeros((5, 1, 4, 4), np.float32), y=np.zeros(5, int))
    np.savez(tmp_path / "threed.npz", x=np.zeros((5, 8, 8), np.float32), y=np.zeros(5, int))
    np.savez(tmp_path / "ylen.npz", x=np.zeros((5, 1, 8, 8), np.float32), y=np.zeros(4, int))
    y = np.zeros(5, int)
    y[3], y[4] = 57, -1
    np.savez(tmp_path / "labels.npz", x=np.zeros((5, 1, 8, 8), np.float32), y=y)
    np.savez(tmp_path / "vgg.npz", **{"features.0.weight": np.zeros((16, 1, 3, 3), np.float32)})
    np.savez(tmp_path / "pickle.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    (tmp_path / "unknown.json").write_text(json.dumps({"layers": {"conv9": {}}}))
    (tmp_path / "impossible.json").write_text(
        json.dumps({"layers": {"fc1": {"weight": {"bits": 40}}}})
    )
    (tmp_path / "broken.json").write_text('{\n "layers": {\n  "fc1": ,\n}}\n')


@pytest.mark.parametrize("argv,msg,code", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_input(argv, msg, code, tmp_path, capsys, net, npz, bad_files):
    out = tmp_path / "out" / "m.fxq"
    out.parent.mkdir()
    got, _, err = run(capsys, *argv(tmp_path, net, npz), "-o", str(out), "-q")
    assert_one_line_error(got, err, msg, code)
    assert list(out.parent.iterdir()) == []  # nothing half-written


def test_output_errors(tmp_path, capsys):
    code, _, err = run(capsys, "quantize", "digits-cnn", "-o", str(tmp_path / "x" / "m.fxq"))
    assert_one_line_error(code, err, "directory")
    code, _, err = run(capsys, "quantize", "digits-cnn", "-o", str(tmp_path / "m.json"))
    assert_one_line_error(code, err, "the output must end in .fxq")


def test_eval_errors(tmp_path, capsys, digits_q8):
    code, _, err = run(capsys, "eval", str(tmp_path / "no.fxq"), "--data", "digits")
    assert_one_line_error(code, err, "no.fxq: no such file")
    artifact.save(digits_q8, tmp_path / "m.fxq")
    npzp = tmp_path / "m.fxq.npz"
    blob = bytearray(npzp.read_bytes())
    blob[-30] ^= 0xFF
    npzp.write_bytes(bytes(blob))
    code, _, err = run(capsys, "eval", str(tmp_path / "m.fxq"), "--data", "digits")
    assert_one_line_error(code, err, "sha256 does not match")
    npzp.unlink()
    code, _, err = run(capsys, "eval", str(tmp_path / "m.fxq"), "--data", "digits")
    assert_one_line_error(code, err, "tensor file")
    (tmp_path / "j.fxq").write_text('{"schema": "other"}')
    code, _, err = run(capsys, "eval", str(tmp_path / "j.fxq"), "--data", "digits")
    assert_one_line_error(code, err, "not an fxpga quantized model")
    bare = copy.deepcopy(digits_q8)  # (the fixture is shared)
    bare.provenance.pop("dataset", None)
    artifact.save(bare, tmp_path / "n.fxq")
    code, _, err = run(capsys, "eval", str(tmp_path / "n.fxq"))
    assert_one_line_error(code, err, "--data is required (the .fxq records no dataset)")


def test_edited_fxq_is_checked(tmp_path, capsys, digits_q8):
    artifact.save(digits_q8, tmp_path / "m.fxq")
    obj = json.loads((tmp_path / "m.fxq").read_text())
    obj["layers"][0]["weight"]["fl"] += 1  # shift no longer consistent
    (tmp_path / "m.fxq").write_text(json.dumps(obj))
    code, _, err = run(capsys, "eval", str(tmp_path / "m.fxq"), "--data", "digits")
    s = digits_q8.layers[0].shift
    assert digits_q8.layers[0].name == "conv1"
    assert_one_line_error(
        code, err, f"layer 'conv1': shift {s} disagrees with the formats (expected {s + 1})"
    )


def test_console_script_exit_status_and_debug(tmp_path):
    """Through a real process: exit 1, one line; --debug shows the traceback."""
    cmd = [
        sys.executable,
        "-m",
        "fxpga",
        "quantize",
        "resnet9000",
        "--data",
        "digits",
        "-o",
        str(tmp_path / "m.fxq"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "fxpga: error:" in p.stderr
    p = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_bundled_example_quantizes(tmp_path, capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "lenet_like.py"
    code, stdout, err = run(
        capsys,
        "quantize",
        f"{example}:make",
        "--data",
        "digits",
        "-o",
        str(tmp_path / "l.fxq"),
        "-q",
    )
    assert code == 0, err
    assert "avgpool" in stdout and "top-1 on digits" in stdout


def test_softmax_last_is_left_to_the_host(tmp_path, capsys, net, npz):
    out = tmp_path / "s.fxq"
    code, stdout, err = run(capsys, "quantize", f"{net}:soft", "--data", str(npz), "-o", str(out))
    assert code == 0, err
    note = "note: log_softmax after 'fc' is applied by the host in float, not in fixed point"
    assert note in stdout
    obj = json.loads(out.read_text())
    assert obj["host_tail"] == ["log_softmax"] and obj["layers"][-1]["name"] == "fc"
    assert artifact.load(out).graph.host_tail == ("log_softmax",)
    code, stdout, _ = run(capsys, "eval", str(out), "--data", str(npz))
    assert code == 0 and note in stdout
    obj["host_tail"] = ["tanh"]
    out.write_text(json.dumps(obj))
    code, _, err = run(capsys, "eval", str(out), "--data", str(npz))
    assert_one_line_error(code, err, "s.fxq: host_tail must list ops of softmax, log_softmax")


AE = """
import torch.nn as nn

def make():
    return nn.Sequential(
        nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 16)
    )
"""


def test_a_model_without_labels(tmp_path, capsys):
    """An autoencoder's data has no y: quantize and eval report the output's SQNR and max
    |error| against float (not top-1), the .fxq records them, the report refuses in one line."""
    (tmp_path / "ae.py").write_text(AE)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ae.npz", x=rng.standard_normal((40, 16)).astype(np.float32))
    out = tmp_path / "ae.fxq"
    code, stdout, err = run(
        capsys, "quantize", f"{tmp_path}/ae.py:make", "--data", str(tmp_path / "ae.npz"),
        "-o", str(out), "-q",
    )  # fmt: skip
    assert code == 0, err
    qm = artifact.load(out)
    xs = np.load(tmp_path / "ae.npz")["x"]
    want = qm.graph.float_forward(xs)
    got = np.ldexp(golden.run(qm, xs).astype(np.float64), -qm.output_fmt.fl)
    sqnr = 10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2))
    line = (
        f"output on ae.npz (40 samples, no labels): SQNR {sqnr:.1f} dB against float, "
        f"max |error| {np.max(np.abs(want - got)):.4g}"
    )
    assert line in stdout and "top-1" not in stdout
    acc = json.loads(out.read_text())["accuracy"]
    assert acc["sqnr_db"] == pytest.approx(sqnr) and "float" not in acc
    code, stdout, _ = run(capsys, "eval", str(out), "--data", str(tmp_path / "ae.npz"))
    assert code == 0 and line in stdout
    code, _, err = run(capsys, "report", str(out), "-o", str(tmp_path / "r.html"))
    assert_one_line_error(code, err, "ae.npz has no labels (y): fxpga report measures top-1")
    assert not (tmp_path / "r.html").exists()


def test_quantize_says_at_once_when_the_engine_will_not_run_the_model(tmp_path, capsys):
    """A 16-bit DS-CNN averages over 25x5, which the engine's divider takes up to 12-bit
    data only: quantize writes the model (eval can use it) and says so, not compile later."""
    assert (
        main(["quantize", "ds-cnn", "--bits", "16", "--calib", "8", "-o", str(tmp_path / "a.fxq")])
        == 0
    )
    out = capsys.readouterr().out
    assert "note: the engine will not run this model: EngineConfig.avg_divide needs" in out
    assert main(["quantize", "ds-cnn", "--calib", "8", "-o", str(tmp_path / "b.fxq")]) == 0
    assert "the engine will not run" not in capsys.readouterr().out


def test_saturation_of_the_input_is_reported(tmp_path, capsys):
    """The input format the search picks may clip the tails of the data: quantize and eval
    say how many values, on which data, instead of saying nothing."""
    from fxpga.quant import data

    fxq = tmp_path / "ae.fxq"
    assert main(["quantize", "fc-ae", "--calib", "64", "-o", str(fxq)]) == 0
    out = capsys.readouterr().out
    qm = artifact.load(fxq)
    x = data.load("noise:640").x_test
    q = np.floor(x * 2.0**qm.input_fmt.fl + 0.5)
    n = int(((q < qm.input_fmt.qmin) | (q > qm.input_fmt.qmax)).sum())
    assert n > 0  # the search trades the tails for resolution here
    line = f"warning: the input format {qm.input_fmt!r} saturates {n:,} of the {x.size:,} values"
    assert f"{line} of noise:640's test split" in out
    assert main(["eval", str(fxq)]) == 0
    assert f"{line} of noise:640's test split" in capsys.readouterr().out
    assert main(["quantize", "digits-cnn", "--calib", "64", "-o", str(tmp_path / "d.fxq")]) == 0
    assert "saturates" not in capsys.readouterr().out


def test_quantize_schemes_and_their_switches(tmp_path, capsys):
    """The default scheme's options each have a --no- switch; --scheme qiu turns them off."""

    def formats(*flags):
        out = tmp_path / "m.fxq"
        code, _, err = run(
            capsys, "quantize", "digits-cnn", "--calib", "64", *flags, "-o", str(out), "-q"
        )
        assert code == 0, err
        doc = json.loads(out.read_text())
        signed = [la.get("output", {}).get("signed", True) for la in doc["layers"]]
        per_channel = [isinstance(la.get("weight", {}).get("fl"), list) for la in doc["layers"]]
        return doc["scheme"], any(not s for s in signed), any(per_channel)

    assert formats() == ("dynamic", True, True)
    assert formats("--no-unsigned") == ("dynamic", False, True)
    assert formats("--no-per-channel") == ("dynamic", True, False)
    assert formats("--scheme", "qiu") == ("qiu", False, False)
    assert formats("--scheme", "qiu", "--per-channel") == ("qiu", False, True)


def test_quantize_choices_are_the_quantizers():
    """The CLI lists the schemes, objectives and roundings by hand (it imports the quantizer
    only when it runs): they must be the quantizer's."""
    from fxpga.cli import build_parser
    from fxpga.quant import quantizer

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    opts = {a.dest: a.choices for a in sub.choices["quantize"]._actions}
    assert tuple(opts["scheme"]) == tuple(quantizer.SCHEMES)
    assert tuple(opts["objective"]) == quantizer.OBJECTIVES
    assert tuple(opts["rounding"]) == quantizer.ROUNDINGS
