"""Loading a user's model runs only what the user chose to run: a .pt2 is read without running
code stored in it (unless --trust-pickle), and a file.py:factory that exits or never returns
is a one-line error."""

import contextlib
import json
import pathlib
import pickle
import signal
import time
import zipfile

import pytest
import torch
from torch._export.serde.schema import SCHEMA_VERSION

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.quant import frontend


class _Touch:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _meta(*sizes):
    strides = [1] * len(sizes)
    for i in range(len(sizes) - 2, -1, -1):
        strides[i] = strides[i + 1] * (sizes[i + 1] if isinstance(sizes[i + 1], int) else 1)
    size = [s if isinstance(s, dict) else {"as_int": s} for s in sizes]
    return {
        "dtype": 7,  # float32
        "sizes": size,
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": s} for s in strides],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }


def _program(batch=1):
    """What torch.export.save writes for ``relu(x)`` on x of shape (batch, 4)."""
    leaf = {"type": None, "context": None, "children_spec": []}
    args = {"type": "builtins.tuple", "context": "null", "children_spec": [leaf]}
    kwargs = {"type": "builtins.dict", "context": "[]", "children_spec": []}
    in_spec = [1, {"type": "builtins.tuple", "context": "null", "children_spec": [args, kwargs]}]
    return {
        "graph_module": {
            "graph": {
                "inputs": [{"as_tensor": {"name": "x"}}],
                "outputs": [{"as_tensor": {"name": "relu"}}],
                "nodes": [
                    {
                        "target": "torch.ops.aten.relu.default",
                        "inputs": [{"name": "self", "arg": {"as_tensor": {"name": "x"}}}],
                        "outputs": [{"as_tensor": {"name": "relu"}}],
                        "metadata": {},
                        "name": "relu",
                    }
                ],
                "tensor_values": {"x": _meta(batch, 4), "relu": _meta(batch, 4)},
                "sym_int_values": {},
                "sym_bool_values": {},
            },
            "signature": {
                "input_specs": [{"user_input": {"arg": {"as_tensor": {"name": "x"}}}}],
                "output_specs": [{"user_output": {"arg": {"as_tensor": {"name": "relu"}}}}],
            },
            "module_call_graph": [
                {
                    "fqn": "",
                    "signature": {
                        "inputs": [],
                        "outputs": [],
                        "in_spec": json.dumps(in_spec),
                        "out_spec": json.dumps([1, leaf]),
                        "forward_arg_names": ["x"],
                    },
                }
            ],
        },
        "opset_version": {"aten": 10},
        "range_constraints": {},
        "schema_version": {"major": SCHEMA_VERSION[0], "minor": SCHEMA_VERSION[1]},
        "verifiers": ["TRAINING"],
        "guards_code": [],
    }


def _archive(path, program=None, sample_inputs=None, weights=None, files=()):
    """A .pt2 laid out as torch.export.save lays it out (members under one root folder)."""
    if sample_inputs is None:
        buf = pathlib.Path(path).with_suffix(".inputs")
        torch.save(((torch.zeros(1, 4),), {}), buf)
        sample_inputs = buf.read_bytes()
    members = {
        "archive_format": b"pt2",
        "archive_version": b"0",
        ".data/version": b"6\n",
        "byteorder": b"little",
        "models/model.json": json.dumps(program or _program()).encode(),
        "data/weights/model_weights_config.json": json.dumps({"config": weights or {}}).encode(),
        "data/constants/model_constants_config.json": b'{"config": {}}',
        "data/sample_inputs/model.pt": sample_inputs,
        **dict(files),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"m/{name}", data)
    return str(path)


def _torch_runs_it(path, marker) -> bool:
    """Whether torch.export.load(...).module() on ``path`` creates ``marker``: shows that the
    archive's payload is live, so that fxpga not running it means something."""
    with contextlib.suppress(Exception):
        torch.export.load(path).module()
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def _one_line(capfd) -> str:
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_pt2_example_inputs_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    p = _archive(tmp_path / "evil.pt2", sample_inputs=pickle.dumps(_Touch(marker), protocol=2))
    g = frontend.from_export(p)
    assert [n.op for n in g.nodes] == ["relu"] and g.input_shape == (4,)
    assert not marker.exists()
    assert _torch_runs_it(p, marker)


def test_pt2_pickled_weight_refused_unless_trusted(tmp_path, capfd):
    marker, out = tmp_path / "ran", tmp_path / "m.fxq"
    weights = {"w": {"path_name": "weight_0", "is_param": False, "use_pickle": True}}
    weights["w"]["tensor_meta"] = None
    files = {"data/weights/weight_0": pickle.dumps(_Touch(marker), protocol=2)}
    p = _archive(tmp_path / "evil.pt2", weights=weights, files=files)
    assert main(["quantize", p, "-o", str(out)]) == 1
    line = _one_line(capfd)
    assert "evil.pt2: weight 'w' is pickled" in line and "--trust-pickle" in line, line
    assert not marker.exists() and not out.exists()
    # the user chose to run it: it runs, and torch's logged traceback is not printed
    assert main(["quantize", p, "-o", str(out), "--trust-pickle"]) == 1
    line = _one_line(capfd)
    assert line.startswith("fxpga: error: ") and "torch.export.load cannot load it" in line
    assert marker.exists() and not out.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_pt2_random_bytes_is_one_line(tmp_path, capfd, trust):
    p = tmp_path / "noise.pt2"
    p.write_bytes(bytes(range(256)) * 12)
    argv = ["quantize", str(p), "-o", str(tmp_path / "m.fxq")] + ["--trust-pickle"] * trust
    assert main(argv) == 1
    assert "noise.pt2: not a torch.export archive (not a" in _one_line(capfd)


def test_pt2_guards_code_never_runs(tmp_path):
    """ExportedProgram.module() exec()s guards_code; fxpga never hands it to torch."""
    marker = tmp_path / "ran"
    program = _program()
    touch = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    program["guards_code"] = [f"1#\n)\n{touch}\ndef g(*a):\n  (0"]
    p = _archive(tmp_path / "evil.pt2", program=program)
    assert [n.op for n in frontend.from_export(p).nodes] == ["relu"]
    assert not marker.exists()
    assert _torch_runs_it(p, marker)


def test_pt2_size_expressions_are_not_evaluated(tmp_path):
    """torch passes a symbolic size to sympy.sympify (an eval): only a plain batch symbol is
    read, as its example value; any other expression is refused."""
    marker = tmp_path / "ran"
    batch = {"as_expr": {"expr_str": "Symbol('s31', positive=True, integer=True)"}}
    batch["as_expr"]["hint"] = {"as_int": 2}
    g = frontend.from_export(_archive(tmp_path / "dyn.pt2", program=_program(batch)))
    assert g.input_shape == (4,)
    evil = {"as_expr": {"expr_str": f"__import__('pathlib').Path({str(marker)!r}).touch() or 1"}}
    evil["as_expr"]["hint"] = {"as_int": 1}
    p = _archive(tmp_path / "evil.pt2", program=_program(evil))
    with pytest.raises(FxpgaError, match=r"tensor 'x' has the symbolic size .*--trust-pickle"):
        frontend.from_export(p)
    assert not marker.exists()
    assert _torch_runs_it(p, marker)


FACTORIES = """
import sys
import torch.nn as nn

class Net(nn.Sequential):
    def load_state_dict(self, state, strict=True):
        sys.exit(3)

def make():
    return Net(nn.Flatten(), nn.Linear(4, 2))

def leave():
    sys.exit(0)

class Exits(nn.Module):
    def forward(self, x):
        sys.exit(0)

def exits():
    return Exits()

def spin():
    while True:  # and an `except Exception` does not swallow the time limit
        try:
            pass
        except Exception:
            pass
"""


@pytest.fixture
def factories(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(FACTORIES)
    return f


def test_factory_calling_sys_exit_is_an_error(factories, capfd):
    assert main(["quantize", f"{factories}:leave", "-o", "m.fxq"]) == 1
    assert _one_line(capfd) == f"fxpga: error: {factories}: leave() called sys.exit(0)"


def test_forward_calling_sys_exit_is_an_error(factories, capfd):
    argv = ["quantize", f"{factories}:exits", "--data", "noise:1x2x2", "-o", "m.fxq"]
    assert main(argv) == 1
    assert _one_line(capfd) == "fxpga: error: Exits.forward() called sys.exit(0)"


def test_import_calling_sys_exit_is_an_error(tmp_path, capfd):
    f = tmp_path / "quits.py"
    f.write_text("import sys\nsys.exit('no model today')\n")
    assert main(["quantize", f"{f}:make", "-o", "m.fxq"]) == 1
    line = _one_line(capfd)
    assert line == f"fxpga: error: {f}: importing it called sys.exit('no model today')"


def test_state_dict_loading_calling_sys_exit_is_an_error(factories, tmp_path, capfd):
    w = tmp_path / "w.pt"
    torch.save({"1.weight": torch.zeros(2, 4), "1.bias": torch.zeros(2)}, w)
    assert main(["quantize", f"{factories}:make", "--weights", str(w), "-o", "m.fxq"]) == 1
    assert _one_line(capfd).endswith(f"{factories}: loading {w} into make() called sys.exit(3)")


def test_factory_that_never_returns_stops_at_timeout(factories, capfd):
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.monotonic()
    assert main(["quantize", f"{factories}:spin", "--timeout", "1", "-o", "m.fxq"]) == 1
    assert time.monotonic() - t0 < 3
    assert _one_line(capfd) == f"fxpga: error: {factories}: spin() did not return within 1 s"
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("value", ["0", "86401", "1.5"])
def test_timeout_is_bounded(capfd, value):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "digits-cnn", "-o", "m.fxq", "--timeout", value])
    assert e.value.code == 2
    line = _one_line(capfd)
    assert "argument --timeout: " in line and "1..86400" in line, line


def test_trust_pickle_applies_to_pt2_only(capfd):
    assert main(["quantize", "digits-cnn", "-o", "m.fxq", "--trust-pickle"]) == 1
    assert _one_line(capfd) == "fxpga: error: --trust-pickle applies to a .pt2 archive only"
