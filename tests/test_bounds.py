"""Every size a user can set has a bound (fxpga/limits.py), checked before anything of that size
is allocated: past it, one line naming the knob, the bound and the value, and nothing written."""

import argparse
import gc
import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch.nn as nn
from test_cli import assert_one_line_error, run  # noqa: E402

from fxpga import limits
from fxpga.boards import build as boards
from fxpga.boards import protocol
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.hw.compiler import EngineConfig
from fxpga.quant import artifact, data, frontend, ir, quantizer
from fxpga.sim import runner, simulate


def never(*args, **kwargs):
    raise AssertionError("called past a bound")


# ---- the command line: the numbers typed there (argparse, exit 2)

ARGS = [
    (["compile", "--lanes", "100000"], "--lanes: lanes must be in 1..256, got 100000"),
    (["compile", "--lanes", "0"], "--lanes: lanes must be in 1..256, got 0"),
    (["compile", "--data-bits", "19"], "--data-bits: bits must be in 2..18, got 19"),
    (["compile", "--weight-bits", "1"], "--weight-bits: bits must be in 2..18, got 1"),
    (["compile", "--acc-bits", "49"], "--acc-bits: accumulator bits must be in 8..48, got 49"),
    (["compile", "--acc-bits", "7"], "--acc-bits: accumulator bits must be in 8..48, got 7"),
    (["compile", "--check", "100001"], "--check: images must be in 1..100000, got 100001"),
    (["simulate", "--samples", "100001"], "--samples: images must be in 1..100000, got 100001"),
    (["simulate", "--lanes", "257"], "--lanes: lanes must be in 1..256, got 257"),
    (["simulate", "--stall", "1"], "--stall: stall probability must be in 0..0.9, got 1"),
    (["simulate", "--stall", "nan"], "--stall: stall probability must be in 0..0.9, got nan"),
    (["simulate", "--stall", "-0.1"], "--stall: stall probability must be in 0..0.9, got -0.1"),
    (["simulate", "--seed", "-1"], "--seed: seed must be in 0..2147483647, got -1"),
    (["build", "--board", "icebreaker", "--lanes", "257"], "--lanes: lanes must be in 1..256"),
    (["build", "--board", "icebreaker", "--freq", "401"], "--freq: MHz must be in 4..400, got 401"),
    (["build", "--board", "icebreaker", "--freq", "3"], "--freq: MHz must be in 4..400, got 3"),
    (["build", "--board", "icebreaker", "--freq", "inf"], "--freq: MHz must be in 4..400, got inf"),
    (["build", "--board", "icebreaker", "--seed", str(2**31)], "--seed: seed must be in 0..2147"),
    (["run", "--port", "soft://", "--baud", "12000001"], "--baud: baud must be in 300..12000000"),
    (["run", "--port", "soft://", "--baud", "299"], "--baud: baud must be in 300..12000000"),
    (["run", "--port", "soft://", "--samples", "0"], "--samples: images must be in 1..100000"),
    (["run", "--port", "soft://", "--timeout", "0"], "--timeout: seconds must be in 0.01..600"),
    (["run", "--port", "soft://", "--timeout", "601"], "--timeout: seconds must be in 0.01..600"),
    (["report", "--lanes", "300"], "--lanes: lanes must be in 1..256, got 300"),
    (["quantize", "--calib", "0"], "--calib: images must be in 1..100000, got 0"),
    (["quantize", "--calib", "100001"], "--calib: images must be in 1..100000, got 100001"),
]


@pytest.mark.parametrize("argv,msg", ARGS, ids=[" ".join(a) for a, _ in ARGS])
def test_cli_bounds(argv, msg, digits_fxq, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compiler, "compile_model", never)
    monkeypatch.setattr(artifact, "load", never)  # refused before the model is read
    cmd, *rest = argv
    model = "digits-cnn" if cmd == "quantize" else str(digits_fxq)
    suffix = {"quantize": "m.fxq", "report": "r.md"}.get(cmd, "dir")
    out = ["-o", str(tmp_path / "out" / suffix)] if cmd != "run" else []  # run writes nothing
    code, stdout, err = run(capsys, cmd, model, *rest, *out, "-q")
    assert_one_line_error(code, err, msg, 2)
    assert stdout == "" and not (tmp_path / "out").exists()


def test_compile_lanes_100000_stops_before_compiling(digits_fxq, tmp_path, capsys, monkeypatch):
    """The library's bound, reached from the command's own code: EngineConfig refuses the lanes
    before compile_model could build per-lane memories."""
    from fxpga.cli import compile as compile_cmd

    monkeypatch.setattr(compiler, "compile_model", never)
    out = tmp_path / "e"
    args = argparse.Namespace(
        model=str(digits_fxq),
        lanes=100000,
        data_bits=None,
        weight_bits=None,
        acc_bits=None,
        no_verilog=True,
        check=None,
        data=None,
        output=str(out),
        quiet=True,
        debug=False,
    )
    with pytest.raises(FxpgaError) as e:
        compile_cmd.run(args)
    assert str(e.value).startswith("EngineConfig.lanes must be in 1..256, not 100000 (")
    assert "ECP5-85F, has 156 multipliers" in str(e.value)
    assert not out.exists()


def test_report_build_with_too_many_lanes(digits_fxq, tmp_path, capsys, monkeypatch):
    """A build directory's lanes go through the same bound (exit 1, nothing written)."""
    monkeypatch.setattr(compiler, "compile_model", never)
    b = tmp_path / "b"
    b.mkdir()
    (b / "build_report.json").write_text(
        json.dumps({"board": "ulx3s-85f", "lanes": 100000, "cycles": 1})
    )
    out = tmp_path / "r.md"
    code, _, err = run(capsys, "report", str(digits_fxq), "--build", str(b), "-o", str(out), "-q")
    assert_one_line_error(code, err, "'lanes' must be an integer 1..256, not 100000")
    assert not out.exists()


def test_simulate_waves_bound(digits_fxq, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(artifact, "load", never)
    out = tmp_path / "s"
    code, _, err = run(
        capsys, "simulate", str(digits_fxq), "--waves", "--samples", "101", "-o", str(out), "-q"
    )
    assert_one_line_error(code, err, "--waves records at most 100 images (one simulator run)")
    assert not out.exists()


# ---- EngineConfig and the compiler

CONFIG = [
    ("lanes", 257, "1..256"),
    ("lanes", 0, "1..256"),
    ("data_bits", 19, "2..18"),
    ("weight_bits", 1, "2..18"),
    ("acc_bits", 49, "8..48"),
    ("acc_bits", 7, "8..48"),
    ("fmap_depth", 2**20 + 1, "1..1048576"),
    ("wmem_depth", 2**40, "1..1048576"),
    ("bmem_depth", 0, "1..1048576"),
    ("max_ops", 257, "1..256"),
    ("post_lanes", 0, "1..256"),
    ("broadcast_copies", 300, "1..256"),
]


@pytest.mark.parametrize("name,value,span", CONFIG)
def test_engine_config_bounds(name, value, span):
    with pytest.raises(FxpgaError) as e:
        EngineConfig(**{name: value})
    msg = str(e.value)
    assert msg.startswith(f"EngineConfig.{name} must be in {span}, not {value} (")
    assert "\n" not in msg


def test_engine_config_largest_values_are_accepted():
    cfg = EngineConfig(
        lanes=256,
        data_bits=18,
        weight_bits=18,
        acc_bits=48,
        fmap_depth=2**20,
        wmem_depth=2**20,
        bmem_depth=2**20,
        max_ops=256,
        broadcast_copies=256,
    )
    assert cfg.lanes == limits.MAX_LANES and cfg.post_lanes == 32


def test_engine_config_names_a_wrong_type():
    with pytest.raises(FxpgaError, match=r"^EngineConfig.lanes must be an integer in 1\.\.256"):
        EngineConfig(lanes="8")


def test_for_model_checks_lanes(digits_q8, monkeypatch):
    monkeypatch.setattr(compiler, "compile_model", never)
    with pytest.raises(FxpgaError, match=r"^EngineConfig.lanes must be in 1\.\.256, not 100000"):
        EngineConfig.for_model(digits_q8, 100000)
    with pytest.raises(FxpgaError, match=r"^EngineConfig.lanes must be in 1\.\.256, not 300"):
        boards.board("ulx3s-85f").engine_config(digits_q8, 300)


# the refused Engine exists (Elaboratable.__new__) before __init__ raises: amaranth warns on
# collection that it was never elaborated
@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_engine_depths_are_checked():
    from fxpga.hw.engine import Engine

    with pytest.raises(
        FxpgaError, match=r"^Engine fmap_depth must be in 1\.\.1048576, not 2097152"
    ):
        Engine(EngineConfig(), None, fmap_depth=2**21)
    with pytest.raises(FxpgaError, match=r"^Engine max_ops must be in 1\.\.256, not 1000"):
        Engine(EngineConfig(), None, max_ops=1000)
    gc.collect()  # the refused engines go (and would warn) here, under this test's filter


@pytest.mark.parametrize(
    "name,value,msg",
    [
        ("MAX_OPS", 3, "program needs 4 entries, an engine has at most 3"),
        (
            "MAX_MEMORY_DEPTH",
            100,
            "feature-map buffer needs 256 entries, an engine has at most 100",
        ),
        ("MAX_WEIGHT_ENTRIES", 1000, "the weight banks need 8 x 1,746 = 13,968 entries, more than"),
    ],
)
def test_compiler_bounds_what_a_model_needs(digits_q8, monkeypatch, name, value, msg):
    """With no depth configured, a memory is sized to the model: the model's needs are held
    to the engine's bounds (lowered here to digits-cnn's scale) before memories are made."""
    monkeypatch.setattr(compiler, name, value)
    with pytest.raises(FxpgaError) as e:
        compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    assert str(e.value).startswith("model does not fit the engine (lanes=8): ")
    assert msg in str(e.value)


def quantized(model, shape, n=4):
    graph = frontend.from_module(model, shape)
    x = np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(np.float32)
    return quantizer.quantize_model(graph, x)


def test_compiler_bounds_avg_pool_windows():
    qm = quantized(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(32)), (1, 32, 32))
    with pytest.raises(
        FxpgaError, match=r"1024 elements; the engine's pool register sums at most 256"
    ):
        compiler.compile_model(qm, EngineConfig(lanes=2))


def test_compiler_bounds_identity_ops_before_making_their_weights(monkeypatch):
    """A second pool after a conv runs as a 1x1 identity convolution: its C×C weights are
    refused before they are made."""
    qm = quantized(
        nn.Sequential(nn.Conv2d(1, 1400, 1), nn.MaxPool2d(1), nn.MaxPool2d(1)), (1, 2, 2)
    )
    monkeypatch.setattr(np, "eye", never)
    with pytest.raises(
        FxpgaError, match=r"identity convolution over 1400 channels, whose 1,960,000"
    ):
        compiler.compile_model(qm, EngineConfig(lanes=8))


# ---- datasets: sizes read from the .npy headers, before any data


def forged_npz(path, x_shape, y_len=3):
    """An .npz whose 'x' header declares ``x_shape`` but holds 64 bytes."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f4", "fortran_order": False, "shape": x_shape}
    )
    y = io.BytesIO()
    np.save(y, np.zeros(y_len, np.int64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", head.getvalue() + bytes(64))
        zf.writestr("y.npy", y.getvalue())
    return path


@pytest.mark.parametrize(
    "x_shape,y_len,msg",
    [
        ((10**9, 1, 8, 8), 3, "'x' has 1,000,000,000 samples, more than 100,000"),
        ((3, 1), 100_001, "'y' has 100,001 samples, more than 100,000"),
        ((10, 3, 1000, 1000), 10, "'x' samples of shape (3, 1000, 1000) hold 3,000,000 values, "),
        ((90_000, 3, 32, 32), 3, "'x' holds 276,480,000 values, more than 268,435,456"),
    ],
)
def test_npz_sizes_are_checked_from_the_headers(tmp_path, monkeypatch, x_shape, y_len, msg):
    p = forged_npz(tmp_path / "big.npz", x_shape, y_len)
    monkeypatch.setattr(np, "load", never)  # refused before any array is read
    with pytest.raises(FxpgaError) as e:
        data.load_npz(p)
    assert str(e.value).startswith(f"{p}: {msg}")
    assert "\n" not in str(e.value)


def test_npz_reads_only_its_arrays(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 1, 8, 8), np.float32), y=np.zeros(5, int), other=np.zeros(3))
    assert data.npz_shapes(p) == {"x": (5, 1, 8, 8), "y": (5,), "other": (3,)}
    ds = data.load_npz(p)
    assert ds.sample_shape == (1, 8, 8) and len(ds.y_test) == 5


def test_cli_quantize_refuses_a_giant_npz(tmp_path, capsys):
    p = forged_npz(tmp_path / "big.npz", (10**9, 1, 8, 8))
    out = tmp_path / "out" / "m.fxq"
    out.parent.mkdir()
    code, _, err = run(capsys, "quantize", "digits-cnn", "--data", str(p), "-o", str(out), "-q")
    assert_one_line_error(code, err, "big.npz: 'x' has 1,000,000,000 samples, more than 100,000")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("n", [0, 100_001])
def test_calib_count_is_checked(digits, n):
    with pytest.raises(FxpgaError, match=rf"^--calib must be in 1\.\.100000, not {n} \(images\)$"):
        digits.calib(n)


# ---- models and calibration


def test_model_input_shape_is_checked_before_tracing(monkeypatch):
    monkeypatch.setattr(frontend.torch.fx, "Tracer", never)
    with pytest.raises(FxpgaError) as e:
        frontend.from_module(nn.Flatten(), (3, 1000, 1000))
    assert str(e.value) == (
        "the model's input: samples of shape (3, 1000, 1000) hold 3,000,000 values, more than "
        "239,616 (two 8-bit feature maps that size fill the ECP5-85F's block RAM)"
    )
    with pytest.raises(FxpgaError, match=r"expected a per-sample shape \(F,\) or \(C, H, W\)"):
        frontend.from_module(nn.Flatten(), (1, 0, 8))


def test_model_tensor_sizes_are_checked():
    m = nn.Sequential(nn.Conv2d(1, 512, 3, padding=1), nn.ReLU())
    with pytest.raises(FxpgaError, match=r"its output \(512, 32, 32\) holds 524,288 values, more"):
        frontend.from_module(m, (1, 32, 32))


def test_model_weight_count_is_checked():
    m = nn.Sequential(nn.Linear(4096, 500))
    with pytest.raises(FxpgaError, match=r"^the model has 2,048,500 weights and biases, more than"):
        frontend.from_module(m, (4096,))


def test_calibration_activations_are_bounded(digits_graph, digits, monkeypatch):
    per = 64 + sum(int(np.prod(n.out_shape)) for n in digits_graph.nodes)
    monkeypatch.setattr(quantizer, "MAX_CALIB_VALUES", 100 * per)
    monkeypatch.setattr(ir.Graph, "float_forward", never)
    with pytest.raises(FxpgaError) as e:
        quantizer.quantize_model(digits_graph, digits.x_calib[:101])
    assert str(e.value) == (
        f"calibrating on 101 images keeps {101 * per:,} activations ({per:,} per image), more "
        f"than {100 * per:,} (2 GiB of float64): use at most 100 images (--calib)"
    )


# ---- simulation


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"stall": 1.0}, "stall must be in 0..0.9, not 1.0 (a stall probability of 1 never ends)"),
        ({"seed": -1}, "seed must be in 0..2147483647, not -1"),
        ({"waves": True, "n": 101}, "waveforms of 101 images: record at most 100"),
    ],
)
def test_simulate_checks_before_building(digits_q8, digits, monkeypatch, kw, msg):
    monkeypatch.setattr(runner, "build", never)
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    kw = dict(kw)
    n = kw.pop("n", 2)
    x = np.repeat(digits.x_test[:1], n, axis=0)
    with pytest.raises(FxpgaError) as e:
        simulate.simulate(digits_q8, prog, x, None, **kw)
    assert str(e.value).startswith(msg)


def test_simulated_samples_are_bounded():
    with pytest.raises(FxpgaError, match=r"^samples must be in 1\.\.100000, not 100001"):
        runner.check_stream_options(100_001, 0, 0.2, False)
    with pytest.raises(FxpgaError, match=r"^samples must be in 1\.\.100000, not 0"):
        runner.check_stream_options(0, 0, 0.2, False)


def test_sim_cache_entries_are_bounded(monkeypatch):
    monkeypatch.setenv("FXPGA_SIM_CACHE_ENTRIES", "10001")
    with pytest.raises(FxpgaError, match=r"FXPGA_SIM_CACHE_ENTRIES='10001': .* in 1\.\.10000"):
        runner._cache_entries()
    monkeypatch.setenv("FXPGA_SIM_CACHE_ENTRIES", "10000")
    assert runner._cache_entries() == 10000


# ---- boards and the host link


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"freq_mhz": 1000.0}, "freq_mhz must be in 4..400, not 1000.0 (the UART needs"),
        ({"freq_mhz": float("nan")}, "freq_mhz must be in 4..400, not nan"),
        ({"seed": -1}, "seed must be in 0..2147483647, not -1 (nextpnr reads it as a C int)"),
        ({"lanes": 100000}, "EngineConfig.lanes must be in 1..256, not 100000"),
    ],
)
def test_board_build_checks_before_anything(digits_q8, tmp_path, monkeypatch, kw, msg):
    monkeypatch.setattr(boards, "compile_model", never)
    out = tmp_path / "b" / "out"
    with pytest.raises(FxpgaError) as e:
        boards.build(digits_q8, "icebreaker", out, **kw)
    assert str(e.value).startswith(msg)
    assert not (tmp_path / "b").exists()


def fake_program(lanes=8, data_bits=8, in_size=64, out_size=10):
    cfg = SimpleNamespace(lanes=lanes, data_bits=data_bits)
    return SimpleNamespace(config=cfg, in_size=in_size, out_size=out_size)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"lanes": 256}, "a board engine has at most 255 lanes (IDENT carries them in a byte)"),
        ({"in_size": 65_536}, "the model's input, 65,536 values of 1 byte(s), is more than one"),
        ({"in_size": 40_000, "data_bits": 12}, "the model's input, 40,000 values of 2 byte(s)"),
        ({"out_size": 4093}, "the model's output, 4,093 values of 1 byte(s), is more than one"),
    ],
)
def test_protocol_sizes(kw, msg):
    with pytest.raises(FxpgaError, match="^" + msg.replace("(", r"\(").replace(")", r"\)")):
        protocol.check_sizes(fake_program(**kw))
    protocol.check_sizes(fake_program(in_size=65_535, out_size=4092))


@pytest.mark.parametrize("timeout", [0, 1e9, float("inf")])
def test_link_timeout_is_bounded(timeout):
    with pytest.raises(FxpgaError, match=r"^Link timeout \(s\) must be in 0\.01\.\.600"):
        protocol.Link(None, timeout=timeout)
