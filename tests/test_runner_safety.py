"""Simulator builds and runs that survive being killed, interrupted or pointed at a bad cache:
a cache entry is whole or absent, a build's process group dies with fxpga, and a simulation
leaves no temporary directory behind (except the one whose log an error names)."""

import fcntl
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError, Terminated
from fxpga.hw import compiler
from fxpga.hw.compiler import EngineConfig
from fxpga.sim import runner, simulate

VERILOG = "module fxpga_engine; endmodule"


class FakeRunner:
    """cocotb's runner, as ``runner.build`` drives it, with a build that runs ``cmd`` through
    the runner's ``_execute_cmds`` (which fxpga replaces) between writing a half of the model
    and the rest of it."""

    log = logging.getLogger("fake-runner")

    def __init__(self, cmd=None, during=None):
        self.cmd, self.during, self.env = cmd, during, dict(os.environ)

    def build(self, build_dir, **kw):
        (Path(build_dir) / "half").write_text("half a model")
        if self.during:
            self.during(Path(build_dir))
        if self.cmd:
            self._execute_cmds([self.cmd], cwd=build_dir)
        (Path(build_dir) / runner.TOP).write_text("model")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty simulator cache in ``tmp_path`` (its ``sim`` directory), no simulator needed."""
    monkeypatch.setenv("FXPGA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "sim_env", lambda sim: {})
    return tmp_path / "cache" / "sim"


def use(monkeypatch, fake):
    import cocotb_tools.runner

    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda sim: fake)


def entries(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def live_in_group(pgid):
    """Processes of process group ``pgid`` that are not zombies."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(pgrp) == pgid and state not in "ZX":
            live.append(int(stat.parent.name))
    return live


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_a_killed_build_takes_its_group_and_leaves_no_entry(cache, tmp_path, monkeypatch, sig):
    """fxpga (a forked copy of this test) builds a model whose build command has a child
    (``sh`` running ``sleep``) and is killed mid-build: the whole build group dies at once (the
    late write never happens), the cache entry is absent, not half-built, and the next build
    removes what the killed one left (SIGKILL) or finds nothing left (SIGTERM: fxpga cleans up
    itself) and builds the entry whole."""
    pidfile, late = tmp_path / "sh.pid", tmp_path / "late"
    cmd = ["sh", "-c", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; sleep 30; "
           f"echo late > {late}"]  # fmt: skip
    use(monkeypatch, FakeRunner(cmd))
    pid = os.fork()
    if pid == 0:  # fxpga
        code = 1
        try:
            runner.build(None, "verilator", verilog=VERILOG)
        except Terminated:
            code = 3
        finally:
            os._exit(code)
    group = None
    try:
        assert wait_for(pidfile.exists), "the build command never started"
        sh = int(pidfile.read_text())
        group = os.getpgid(sh)
        assert group != os.getpgrp()  # the build runs in a process group of its own
        [private] = [p for p in cache.iterdir() if p.name.startswith(".fxpga-build-")]
        assert (private / "half").exists() and entries(cache) == [private.name]
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        pid = None
        if sig == signal.SIGTERM:
            assert os.waitstatus_to_exitcode(status) == 3  # SIGTERM raised Terminated
        assert wait_for(lambda: not live_in_group(group), 5.0), live_in_group(group)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if group and group != os.getpgrp() and live_in_group(group):
            os.killpg(group, signal.SIGKILL)
    assert not late.exists()
    assert entries(cache) == ([private.name] if sig == signal.SIGKILL else [])

    use(monkeypatch, FakeRunner())
    d = runner.build(None, "verilator", verilog=VERILOG)
    assert entries(cache) == [d.name]  # the killed build's private directory is gone
    assert (d / "BUILT").is_file() and (d / runner.TOP).read_text() == "model"
    assert (d / "build.log").is_file() and not (d / ".owner").exists()
    assert sorted(p.name for p in cache.iterdir()) == [d.name, f"{d.name}.lock"]


def test_an_entry_appears_only_when_complete(cache, monkeypatch):
    """While the model is built its entry does not exist; a failed build leaves no entry and
    no private directory, only its log, which the error names."""
    seen = []

    def during(work):
        seen.append((work.name, entries(work.parent)))

    use(monkeypatch, FakeRunner(["sh", "-c", "echo Vtop.o Error 1; exit 2"], during))
    with pytest.raises(FxpgaError, match=r"verilator build failed \(Vtop.o Error 1\); see ") as e:
        runner.build(None, "verilator", verilog=VERILOG)
    [(work, listing)] = seen
    assert listing == [work]  # the private directory, and no entry
    [log] = cache.glob("verilator-*.log")
    assert str(e.value).endswith(f"see {log}") and "Vtop.o Error 1" in log.read_text()
    assert entries(cache) == []


def test_a_model_another_process_built_first_is_kept(cache, monkeypatch):
    """Another fxpga that built the same model meanwhile (not holding the same lock file, say
    after an evict removed it) published it first: its model is kept and this one dropped."""
    built = []

    def during(work):
        d = work.parent / work.name[len(".fxpga-build-") :].rsplit("-", 1)[0]
        d.mkdir()
        (d / "BUILT").write_text("1 s\n")
        (d / runner.TOP).write_text("their model")
        built.append(d)

    use(monkeypatch, FakeRunner(during=during))
    d = runner.build(None, "verilator", verilog=VERILOG)
    assert [d] == built and (d / runner.TOP).read_text() == "their model"
    assert entries(cache) == [d.name]


def test_only_abandoned_private_dirs_are_removed(cache):
    """evict removes a private build directory only if it has fxpga's name and its builder is
    gone: its owner file unlocked and holding a pid, or never claimed and a minute old."""
    cache.mkdir(parents=True)
    key = "0123456789abcdef"

    def private(suffix, owner=None, age=0):
        p = cache / f".fxpga-build-verilator-{key}-{suffix}"
        p.mkdir()
        (p / "Vtop.o").write_text("half")
        if owner is not None:
            (p / ".owner").write_text(owner)
            os.utime(p / ".owner", (time.time() - age,) * 2)
        os.utime(p, (time.time() - age,) * 2)
        return p

    dead = private("dead0000", "4242\n")
    unclaimed_old = private("old00000", age=120)
    unclaimed_new = private("new00000")
    claiming = private("claim000", "")  # created, not yet written by its locked builder
    alive = private("alive000", "4243\n")
    other = cache / ".fxpga-build-notes"
    other.mkdir()
    os.utime(other, (0, 0))
    with open(alive / ".owner", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert runner.evict(cache, 10) == []
    left = {p.name for p in cache.iterdir()}
    assert left == {p.name for p in (unclaimed_new, claiming, alive, other)}
    assert not dead.exists() and not unclaimed_old.exists()


@pytest.mark.parametrize("where", ["/dev/null", "file"])
def test_an_unusable_cache_is_a_one_line_error(where, digits_fxq, tmp_path, monkeypatch, capsys):
    cache = where if where == "/dev/null" else str(tmp_path / "a-file")
    if where == "file":
        Path(cache).write_text("not a directory")
    monkeypatch.setenv("FXPGA_CACHE", cache)
    want = (
        f"FXPGA_CACHE='{cache}': cannot keep simulator models in '{cache}/sim' (Not a "
        f"directory); set FXPGA_CACHE to a writable directory"
    )
    assert main(["simulate", str(digits_fxq), "-q"]) == 1
    assert capsys.readouterr().err == f"fxpga: error: {want}\n"
    with pytest.raises(FxpgaError) as e:
        runner.build(None, "verilator", verilog=VERILOG)
    assert str(e.value) == want


@pytest.fixture
def fake_sim(tmp_path, monkeypatch):
    """``simulate.simulate`` with the builds and simulator runs faked (each run writes its log
    into its directory and, unless told otherwise, matches golden), ``TMPDIR`` in
    ``tmp_path/tmp`` and 2 images a simulator run."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(simulate, "CHUNK", 2)
    monkeypatch.setattr(runner, "build", lambda *a, **kw: tmp_path / "model")
    plan = {"fail_run": None, "interrupt_run": None, "interrupt": None, "bad": set(), "runs": 0}

    def run_cocotb(build_dir, sim, module, job, workdir, **kw):
        k = plan["runs"]
        plan["runs"] += 1
        log = Path(workdir) / "sim.log"
        log.write_text("simulating\n")
        if k == plan["interrupt_run"]:
            raise plan["interrupt"]()
        if k == plan["fail_run"]:
            raise runner.SimulationFailed(f"verilator simulation failed; see {log}", workdir)
        results = []
        for n, step in enumerate(job["steps"]):
            for i in step.get("samples", range(len(job["samples"]))):
                want = step.get("expected", job["expected"][i])
                ok = (k, n) not in plan["bad"]  # (run, step)
                results.append({"got": want, "match": ok, "cycles": 1})
        return {"results": results, "wall_s": 0.1, "sim_cycles": 10}, log

    monkeypatch.setattr(runner, "run_cocotb", run_cocotb)
    return tmp, plan


def test_a_simulation_removes_its_run_directories(fake_sim, digits_q8, digits, tmp_path):
    tmp, plan = fake_sim
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    x = digits.x_test[:5]
    rep = simulate.simulate(digits_q8, prog, x, None, progress=False)
    assert plan["runs"] == 3 and rep.mismatches == [] and list(tmp.iterdir()) == []
    simulate.simulate(digits_q8, prog, x, None, progress=False, out_dir=tmp_path / "out")
    assert len(list((tmp_path / "out").iterdir())) == 3  # asked for: kept
    assert list(tmp.iterdir()) == []

    for interrupt in (KeyboardInterrupt, Terminated):  # Ctrl-C, SIGTERM
        plan.update(runs=0, interrupt_run=1, interrupt=interrupt)
        with pytest.raises(interrupt):
            simulate.simulate(digits_q8, prog, x, None, progress=False)
        assert list(tmp.iterdir()) == []

    plan.update(runs=0, interrupt_run=None, fail_run=1)
    with pytest.raises(runner.SimulationFailed) as e:
        simulate.simulate(digits_q8, prog, x, None, progress=False)
    [kept] = tmp.iterdir()  # the failed run's, whose log the message names; not the first's
    assert kept.name.startswith("fxpga-run1-") and str(e.value).endswith(f"{kept}/sim.log")


def test_a_mismatch_keeps_only_what_the_report_names(fake_sim, digits_q8, digits):
    """A mismatch: the run directories go, the failing input, the log and the re-run that
    located the bad layer stay in one directory, which the report lists."""
    tmp, plan = fake_sim
    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    plan["bad"] = {(0, 0), (2, 0)}  # the first run's images; the re-run's first layer

    rep = simulate.simulate(digits_q8, prog, digits.x_test[:3], None, progress=False)
    assert rep.mismatches == [0, 1] and rep.first_bad_layer.startswith("op 0: ")
    [kept] = tmp.iterdir()
    assert kept.name.startswith("fxpga-mismatch-")
    failing = Path(rep.artifacts["failing input"])
    assert failing.parent == kept and np.load(failing)["index"] == 0
    assert Path(rep.artifacts["simulator log"]).is_relative_to(kept)
    assert any(str(kept) in line for line in rep.lines())


def test_icarus_waves_go_to_the_run_directory(tmp_path, monkeypatch):
    """An Icarus model records its waveform where its build put it unless told otherwise: each
    run tells it its own directory (the model is shared, and its build directory was renamed).
    The simulation, too, runs in a process group of its own."""
    import cocotb_tools.runner

    seen = {}

    class Sim(FakeRunner):
        def test(self, **kw):
            seen.update(kw)
            self._execute_cmds([["sh", "-c", "cut -d' ' -f5 /proc/$$/stat > pgid"]], kw["test_dir"])
            Path(kw["test_dir"], runner.TOP + ".fst").write_text("waves")
            results = {"results": [{"got": [1], "match": True, "cycles": 5}], "wall_s": 0.1}
            Path(kw["test_dir"], "results.json").write_text(json.dumps(results | {"sim_cycles": 5}))

    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda sim: Sim())
    monkeypatch.setattr(runner, "sim_env", lambda sim: {})
    prog = type("P", (), {"out_size": 1})()
    r = runner.run_job(prog, tmp_path / "m", "icarus", [[0]], [[1]], tmp_path / "w", waves=True)
    work = (tmp_path / "w").resolve()
    assert seen["plusargs"] == [f"+dumpfile_path={work}/{runner.TOP}.fst"]
    assert r.waves == work / f"{runner.TOP}.fst"
    assert int((work / "pgid").read_text()) != os.getpgrp()


def test_without_labels_simulate_reports_sqnr_against_float(fake_sim, digits_q8, digits):
    """A model without labels (say, an autoencoder) gets what quantize reports there: the
    output's SQNR and max |error| against float, not a top-1 agreement."""
    from fxpga.quant import quantizer

    prog = compiler.compile_model(digits_q8, EngineConfig(lanes=8))
    x = digits.x_test[:4]
    rep = simulate.simulate(digits_q8, prog, x, None, progress=False)
    sqnr, max_err = quantizer.output_quality(digits_q8, x)  # the engine's output is golden's
    assert rep.sqnr_db == pytest.approx(sqnr) and rep.max_err == pytest.approx(max_err)
    [line] = [ln for ln in rep.lines() if "float model" in ln]
    assert line == (
        f"output against the float model (no labels): SQNR {sqnr:.1f} dB, max |error| {max_err:.4g}"
    )
    labelled = simulate.simulate(digits_q8, prog, x, digits.y_test[:4], progress=False)
    assert labelled.sqnr_db is None
    assert any(ln.startswith("top-1 agreement with the float model") for ln in labelled.lines())
