"""``fxpga compile``: outputs, the estimate table, --check, and its errors."""

import json

import numpy as np
import pytest
from test_cli import run  # noqa: E402

from fxpga.quant import artifact


def widest_accumulator(qm) -> str:
    """What the compiler says of the model's widest accumulator (the first layer of the widest
    width), computed from the model rather than quoted: quantization picks the widths."""
    worst = max((la for la in qm.layers if la.acc_bits), key=lambda la: la.acc_bits)
    return f"layer '{worst.name}' needs a {worst.acc_bits}-bit accumulator"


def test_compile_writes_program_images_and_verilog(digits_fxq, tmp_path, capsys):
    out = tmp_path / "eng"
    code, stdout, err = run(
        capsys, "compile", str(digits_fxq), "--lanes", "8", "-o", str(out), "-q"
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".fxpga-outputs.json",
        "bias.hex",
        "fxpga_engine.v",
        "program.hex",
        "program.json",
    ] + [f"wbank{i}.hex" for i in range(8)]
    assert "module fxpga_engine" in (out / "fxpga_engine.v").read_text()
    prog = json.loads((out / "program.json").read_text())
    assert [op["name"] for op in prog["ops"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert prog["total_cycles"] == sum(op["cycles"] for op in prog["ops"])
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["op", "fused"]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1] == f"{prog['total_macs']:,}" and total[2] == f"{prog['total_cycles']:,}"
    # weights: lane 0 holds channel 0 of conv1 first, as two's complement hex
    w0 = (out / "wbank0.hex").read_text().split()
    assert len(w0) == prog["wmem_depth"] and all(len(h) == 2 for h in w0)


def test_compile_check_runs_the_engine(digits_fxq, tmp_path, capsys):
    code, stdout, err = run(
        capsys,
        "compile",
        str(digits_fxq),
        "--lanes",
        "3",
        "--no-verilog",
        "--check",
        "1",
        "-o",
        str(tmp_path / "e"),
        "-q",
    )
    assert code == 0, err
    assert "1/1 images bit-exact with golden" in stdout


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--acc-bits", "12"], None),  # the widest layer of the model at hand
        (["--weight-bits", "4"], "weights need 8 bits, the engine has weight_bits=4"),
        (["--lanes", "0"], "lanes must be in 1..256, got 0"),
    ],
)
def test_compile_errors(digits_fxq, digits_q8, tmp_path, capsys, argv, msg):
    if msg is None:
        msg = f"{widest_accumulator(digits_q8)}, the engine has acc_bits=12"
    out = tmp_path / "e"
    code, _, err = run(capsys, "compile", str(digits_fxq), *argv, "-o", str(out), "-q")
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and msg in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_compile_missing_model(tmp_path, capsys):
    code, _, err = run(capsys, "compile", str(tmp_path / "no.fxq"), "-o", str(tmp_path / "e"))
    assert code == 1 and "no.fxq: no such file" in err


def test_a_branching_model_compiles(tmp_path, capsys):
    """A concat of a tensor and a residual add of it: the compiler lays it out, with the
    copies its buffers need."""
    import json

    import torch
    import torch.nn as nn

    from fxpga.quant import frontend, quantizer

    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.fc(torch.flatten(torch.cat([y, self.b(y) + y], 1), 1))

    model = Residual().eval()
    g = frontend.from_module(model, (1, 4, 4))
    x = np.random.default_rng(0).standard_normal((16, 1, 4, 4))
    qm = quantizer.quantize_model(g, x, quantizer.Widths(8))
    qm.provenance["dataset"] = "digits"
    artifact.save(qm, tmp_path / "r6.fxq")
    out = tmp_path / "e"
    code, _, err = run(capsys, "compile", str(tmp_path / "r6.fxq"), "-o", str(out), "-q")
    assert code == 0, err
    prog = json.loads((out / "program.json").read_text())
    assert prog["engine"]["branches"]
    assert [(op["name"], op["fused"]) for op in prog["ops"]] == [
        ("a", ["a", "relu"]),
        ("relu:copy", []),  # y + b(y): the add's operands would share a buffer
        ("b", ["b", "add"]),
        ("relu:into:cat", ["cat"]),  # y has other readers: copied into the concat
        ("add:into:cat", ["cat"]),  # an add's output keeps its operand's layout: copied
        ("fc", ["fc"]),
    ]
