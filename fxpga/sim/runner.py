"""Build the engine's Verilog for an HDL simulator (cached) and run cocotb jobs on it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FxpgaError, Terminated
from ..hw.compiler import Program
from ..hw.engine import REGION_PROGRAM, Engine
from ..limits import (
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SIM_CACHE_ENTRIES,
    MAX_STALL,
    MAX_WAVE_SAMPLES,
    check_range,
)
from .tools import patched_env, sim_env

TOP = "fxpga_engine"
TEST_MODULE = "fxpga.sim.bench"


def cache_root() -> Path:
    d = os.environ.get("FXPGA_CACHE")
    return (Path(d) if d else Path.home() / ".cache" / "fxpga") / "sim"


def usable_cache_root() -> Path:
    """``cache_root()``, created if need be; a one-line error naming it and ``FXPGA_CACHE`` if
    it cannot hold models (a file, ``/dev/null``, a directory fxpga may not write)."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root))
    except OSError as e:
        raise _cache_error(root, e) from e
    return root


def _cache_error(root: Path, e: OSError) -> FxpgaError:
    env = os.environ.get("FXPGA_CACHE")
    knob = f"FXPGA_CACHE={env!r}: " if env else ""
    return FxpgaError(
        f"{knob}cannot keep simulator models in {str(root)!r} ({e.strerror or e}); set "
        f"FXPGA_CACHE to a writable directory"
    )


# Simulator models kept in the cache; the least recently used go first. A Verilator model is
# ~1 MB once its build intermediates are gone (its precompiled headers alone were 140 MB), an
# Icarus one ~3 MB.
CACHE_ENTRIES = 200
# Verilator intermediates that running the model never reads: precompiled headers, objects,
# archives, make dependencies.
_BUILD_ONLY = ("*.gch", "*.o", "*.a", "*.d")
# A model directory without a BUILT stamp is either being built (leave it) or was abandoned.
_ABANDONED_S = 24 * 3600
# A model is built in a private directory beside its cache entry, named by this prefix, the
# entry's name and a random suffix, and renamed onto the entry once complete: an entry is
# whole or absent. The builder holds an flock on the private directory's owner file, into which
# it writes its pid once locked; a private directory whose owner file is unlocked and holds a
# pid (or is older than _CLAIM_S without one) was left by a builder that died.
_PRIVATE = ".fxpga-build-"
_PRIVATE_NAME = re.compile(r"\.fxpga-build-(?:verilator|icarus)-[0-9a-f]{16}-[a-z0-9_]+")
_OWNER = ".owner"
_CLAIM_S = 60


def _cache_entries() -> int:
    v = os.environ.get("FXPGA_SIM_CACHE_ENTRIES")
    if v is None:
        return CACHE_ENTRIES
    try:
        n = int(v)
    except ValueError:
        n = -1
    if not 1 <= n <= MAX_SIM_CACHE_ENTRIES:
        raise FxpgaError(
            f"FXPGA_SIM_CACHE_ENTRIES={v!r}: expected a whole number in "
            f"1..{MAX_SIM_CACHE_ENTRIES} (at ~1 MB a model)"
        )
    return n


def _last_used(d: Path) -> float | None:
    """When the model in ``d`` was last built or used; None if it is being built."""
    for name in ("USED", "BUILT"):
        with contextlib.suppress(OSError):
            return (d / name).stat().st_mtime
    with contextlib.suppress(OSError):
        t = d.stat().st_mtime
        if time.time() - t > _ABANDONED_S:
            return t
    return None


def evict(root: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently used models under ``root``; return them.
    Private build directories whose builder died go too (they are not models)."""
    aged = []
    for d in root.iterdir() if root.is_dir() else ():
        if d.name.startswith(_PRIVATE):
            continue
        t = _last_used(d) if d.is_dir() else None
        if t is not None:
            aged.append((t, d))
    aged.sort(reverse=True)
    gone = [d for _, d in aged[keep:]]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
        (d.parent / f"{d.name}.lock").unlink(missing_ok=True)
        (d.parent / f"{d.name}.log").unlink(missing_ok=True)
    remove_abandoned(root)
    return gone


def remove_abandoned(root: Path) -> list[Path]:
    """Delete the private build directories under ``root`` whose builder is gone (the rule is
    at ``_PRIVATE``); return them. Nothing else is touched."""
    return [
        p
        for p in (root.glob(f"{_PRIVATE}*") if root.is_dir() else ())
        if _PRIVATE_NAME.fullmatch(p.name)
        and not p.is_symlink()
        and p.is_dir()
        and _remove_if_abandoned(p)
    ]


def _remove_if_abandoned(p: Path) -> bool:
    try:
        with open(p / _OWNER, "rb") as owner:
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # its builder is at work
            if not owner.read().strip() and _age(p / _OWNER) <= _CLAIM_S:
                return False  # its builder is about to lock it
            shutil.rmtree(p, ignore_errors=True)  # with the lock held: no builder can claim it
            return True
    except FileNotFoundError:  # made, never claimed: its builder died in between, or is young
        if _age(p) <= _CLAIM_S:
            return False
        shutil.rmtree(p, ignore_errors=True)
        return True
    except OSError:
        return False


def _age(p: Path) -> float:
    try:
        return time.time() - p.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def _private_dir(root: Path, name: str):
    """A new private directory in ``root`` to build the model ``name`` in, claimed (its owner
    file locked, this pid written) for as long as the block runs and removed at its end unless
    it was renamed away."""
    with contextlib.ExitStack() as stack:
        work = None
        try:
            work = Path(tempfile.mkdtemp(dir=root, prefix=f"{_PRIVATE}{name}-"))
            owner = stack.enter_context(open(work / _OWNER, "w"))
        except OSError as e:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            raise _cache_error(root, e) from e
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # before the owner is closed
        fcntl.flock(owner, fcntl.LOCK_EX)
        owner.write(f"{os.getpid()}\n")
        owner.flush()
        yield work


# The leader of each simulator command's process group, run as ``python -c``: it runs the
# command inside its group and, on SIGTERM, kills the whole group. On Linux the kernel sends it
# SIGTERM when the fxpga thread that started it dies (PR_SET_PDEATHSIG), by SIGKILL too, so a
# killed fxpga leaves no make or compiler behind.
_LEADER = """\
import os, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os.killpg(0, signal.SIGKILL)
sys.exit(subprocess.call(sys.argv[2:]))
"""


def _run_in_group(cmd, cwd, env, stdout=None) -> int:
    """Run ``cmd`` under ``_LEADER`` in a session (and process group) of its own; return its
    exit status. Whatever is left of the group when the command ends, or when waiting for it is
    interrupted (any exception, KeyboardInterrupt, ``Terminated``), is
    killed: the group is killed before the leader is reaped, so its id cannot be reused."""
    p = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _LEADER, str(os.getpid()), *map(str, cmd)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=None if stdout is None else subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return p.returncode


def _in_own_groups(r, before=None):
    """The cocotb runner ``r``, made to run each of its commands (Verilator, make, iverilog, the
    simulation) with ``_run_in_group``, calling ``before(cmd)`` first if given. cocotb's runner
    starts them with ``subprocess.run`` and no way to ask for a process group, so its
    ``_execute_cmds`` is replaced on ``r``."""
    from cocotb_tools.runner import Runner

    if not callable(getattr(Runner, "_execute_cmds", None)):
        import cocotb

        raise FxpgaError(
            f"cocotb {cocotb.__version__}: cocotb_tools.runner.Runner has no _execute_cmds, "
            f"through which fxpga runs simulator commands in a process group of their own "
            f"(cocotb 2.1 has it)"
        )

    def execute_cmds(cmds, cwd, stdout=None):
        for cmd in cmds:
            if before is not None:
                before(cmd)
            r.log.info("Running command %s in directory %s", shlex.join(map(str, cmd)), cwd)
            code = _run_in_group(cmd, cwd, r.env, stdout)
            if code != 0:
                raise RuntimeError(f"Command failed with return code: {code}")

    r._execute_cmds = execute_cmds
    return r


@contextlib.contextmanager
def sigterm_interrupts():
    """While the block runs, SIGTERM raises ``Terminated``, which unwinds like Ctrl-C, so that
    the simulator's process groups are killed and fxpga's temporary files removed on the way
    out. Only in the main thread, and only where SIGTERM has its default action (the command
    line installs the same handler itself)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Verilator's run-time library (verilated.cpp and the others its makefile lists as "global")
# is the same C++ for every model built with the same options: its objects are kept as a cache
# entry of their own, keyed by those options, the compiler and the sources, and copied into
# each later build before its make, which then finds them up to date. Objects that depend on
# the model (cocotb's verilator.cpp includes Vtop.h) are not among them.
_CLASSES_MK = "Vtop_classes.mk"


def _runtime_entry(root: Path, work: Path) -> tuple[Path, list[str]] | None:
    """The cache entry of the run-time objects the make in ``work`` would compile, and their
    names; None if its makefiles do not list them."""
    try:
        lines = (work / _CLASSES_MK).read_text().splitlines()
    except OSError:
        return None
    options, names, listing = [], set(), False
    for line in lines:
        if listing:
            names.update(n for n in line.split() if n != "\\")
            listing = line.rstrip().endswith("\\")
        elif line.startswith(("VM_GLOBAL_FAST +=", "VM_GLOBAL_SLOW +=")):
            listing = line.rstrip().endswith("\\")
        elif line.startswith("VM_") and " = " in line:
            options.append(line.strip())
    if not names:
        return None
    names = sorted(names)
    include = Path(os.environ.get("VERILATOR_ROOT", "")) / "include"
    cxx = shutil.which(os.environ.get("CXX", "c++")) or ""
    h = hashlib.sha256(b"verilator-runtime:v1\n")
    h.update(repr((sorted(options), names, os.environ.get("MAKEFLAGS", ""), cxx)).encode())
    for f in [Path(cxx), include / "verilated.mk", *(include / f"{n}.cpp" for n in names)]:
        with contextlib.suppress(OSError):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return root / f"verilator-{h.hexdigest()[:16]}", names


def _seed_runtime(root: Path, work: Path) -> None:
    """Copy the cached run-time objects (``*.o`` and their ``*.d``) into ``work``, newer than
    their sources, so that its make does not compile them again."""
    found = _runtime_entry(root, work)
    if found is None or not (found[0] / "BUILT").exists():
        return
    entry, names = found
    try:
        for n in names:
            for ext in (".o", ".d"):
                shutil.copyfile(entry / f"{n}{ext}", work / f"{n}{ext}")
        (entry / "USED").touch()
    except OSError:  # evicted meanwhile: make compiles whatever is missing
        for n in names:
            (work / f"{n}.o").unlink(missing_ok=True)


def _keep_runtime(root: Path, work: Path) -> None:
    """Keep the run-time objects of the model just built in ``work`` as their cache entry,
    unless it exists; renamed into place whole, like a model."""
    found = _runtime_entry(root, work)
    if found is None or found[0].exists():
        return
    entry, names = found
    files = [work / f"{n}{ext}" for n in names for ext in (".o", ".d")]
    if not all(f.is_file() for f in files):
        return
    with contextlib.suppress(OSError, FxpgaError), _private_dir(root, entry.name) as tmp:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        (tmp / "BUILT").write_text("verilator run-time objects\n")
        os.rename(tmp, entry)
        (entry / _OWNER).unlink(missing_ok=True)


def engine_verilog(prog: Program | None, config=None, platform=None, **depths) -> str:
    """Verilog of the engine with ``prog`` baked in, or (``prog=None``) of an engine with
    empty memories of the given ``depths``, loaded at run time (``load_writes``); elaborated
    for ``platform`` (e.g. one whose ``family`` is ``"ecp5"``: its primitives instantiated)."""
    from amaranth.back import verilog

    engine = Engine(prog.config, prog) if prog is not None else Engine(config, None, **depths)
    return verilog.convert(engine, name=TOP, platform=platform)


def load_writes(prog: Program) -> list[tuple[int, int]]:
    """``cfg`` bus writes that load ``prog`` (program words, biases, weights) at run time."""
    from ..hw.engine import REGION_BIAS, REGION_WEIGHTS, program_words

    writes = [(REGION_PROGRAM << 28 | i, w) for i, w in enumerate(program_words(prog))]
    writes += [(REGION_BIAS << 28 | i, b) for i, b in enumerate(prog.bias_words)]
    writes += [
        (REGION_WEIGHTS << 28 | lane << 20 | i, w)
        for lane, bank in enumerate(prog.wmem)
        for i, w in enumerate(bank)
    ]
    return writes


@contextlib.contextmanager
def _output_to(log: Path):
    """Send this process's (and its children's) stdout/stderr to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(log: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if "error" in ln.lower()]
    return " | ".join((errs or lines)[-n:])


def build(
    prog: Program | None,
    simulator: str,
    waves: bool = False,
    verilog: str | None = None,
    info=lambda msg: None,
    top: str = TOP,
    extra_sources: tuple[Path, ...] = (),
) -> Path:
    """Build (or reuse) a simulator model of the engine for ``prog``.

    Cached under ``~/.cache/fxpga/sim/<simulator>-<hash>`` keyed by the Verilog text (memory
    images included), the simulator and whether waves are traced: a second run does not
    rebuild. The model is built in a private directory and renamed onto its entry once complete,
    so an entry is never half-built, whatever happens to the build. Verilator's build
    intermediates are deleted once the model is built, and only the
    ``$FXPGA_SIM_CACHE_ENTRIES`` (default 200) most recently used models are kept.
    """
    env = sim_env(simulator)
    if simulator == "verilator" and waves:
        # a traced model runs one image for its waveform: its C++ is compiled for build speed
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} OPT_FAST=-O0".strip()
    text = verilog if verilog is not None else engine_verilog(prog)
    extra = "".join(Path(p).read_text() for p in extra_sources)
    key = hashlib.sha256(f"{simulator}:{waves}:{top}:v3\n{text}{extra}".encode()).hexdigest()
    key = key[:16]
    root = usable_cache_root()
    d = root / f"{simulator}-{key}"
    keep = _cache_entries()
    # one builder per model: another process (a pytest-xdist worker, a second fxpga) that
    # wants the same model waits here, then finds it built
    with contextlib.ExitStack() as stack:
        try:
            lock = stack.enter_context(open(root / f"{d.name}.lock", "w"))
        except OSError as e:
            raise _cache_error(root, e) from e
        stack.enter_context(sigterm_interrupts())
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(d, text, extra_sources, top, simulator, waves, env, keep, info)


def _build_locked(d, text, extra_sources, top, simulator, waves, env, keep, info) -> Path:
    from cocotb_tools.runner import get_runner

    if (d / "BUILT").exists():
        (d / "USED").touch()
        return d
    root = d.parent
    remove_abandoned(root)
    if d.is_dir() and not d.is_symlink():
        # an entry without its stamp was built in place by an older fxpga that did not finish
        # (its builder held this lock, so it is gone)
        shutil.rmtree(d)
    log = root / f"{d.name}.log"
    info(f"building the {simulator} model (once per design; log: {log})")
    t0 = time.monotonic()
    with _private_dir(root, d.name) as work:
        src = work / f"{top}.v"
        src.write_text(text)
        kw = {
            "sources": [src, *extra_sources], "hdl_toplevel": top, "build_dir": work,
            "waves": waves,
        }  # fmt: skip
        if simulator == "verilator":
            # cocotb's runner passes --public-flat-rw, which puts every net of the design in
            # the VPI symbol table and multiplies the C++ to compile; the bench reaches only
            # the top's ports, which are public at depth 1
            kw["build_args"] = [
                "-Wno-fatal", "-Wno-WIDTH", "-O2", "--no-public-flat-rw", "--public-depth", "1",
            ]  # fmt: skip
        else:
            kw["timescale"] = ("1ns", "1ps")
        log.unlink(missing_ok=True)  # a new file: nothing of an earlier build writes into it

        def before(cmd, work=work):
            if simulator == "verilator" and cmd and cmd[0] == "make":
                _seed_runtime(root, work)

        r = _in_own_groups(get_runner(simulator), before)
        try:
            with patched_env(env), _output_to(log):
                r.build(**kw)
                if simulator == "verilator":
                    _keep_runtime(root, work)
        except (SystemExit, Exception) as e:
            raise FxpgaError(f"{simulator} build failed ({_tail(log)}); see {log}") from e
        for pattern in _BUILD_ONLY:
            for f in work.glob(pattern):
                f.unlink()
        (work / "BUILT").write_text(f"{time.monotonic() - t0:.1f} s\n")
        os.replace(log, work / "build.log")
        try:
            os.rename(work, d)
        except OSError as e:
            # another fxpga built the same model meanwhile (say, it took the lock after an
            # evict removed the lock file): keep its model, drop this one
            if not (d / "BUILT").exists():
                raise FxpgaError(f"cannot move the built model onto {d}: {e.strerror}") from e
        else:
            (d / _OWNER).unlink(missing_ok=True)
    evict(root, keep)
    return d


class SimulationFailed(FxpgaError):
    """A simulator run that failed; its message names the log, which is in ``workdir``."""

    def __init__(self, msg: str, workdir: Path):
        super().__init__(msg)
        self.workdir = workdir


@dataclass
class JobResult:
    got: list[list[int]]  # per inference, engine order
    match: list[bool]
    cycles: list[int]
    wall_s: float
    sim_cycles: int
    log: Path
    waves: Path | None = None
    extra: dict = field(default_factory=dict)


def run_cocotb(
    build_dir: Path,
    simulator: str,
    test_module: str,
    job: dict,
    workdir: Path,
    *,
    seed: int = 0,
    waves: bool = False,
    top: str = TOP,
) -> tuple[dict, Path]:
    """Run cocotb ``test_module`` on a built model with ``job`` (JSON, via FXPGA_SIM_JOB);
    the module writes its results to ``job["results"]``. Returns (results, log path)."""
    from cocotb_tools.runner import get_runner

    workdir = Path(workdir).resolve()  # the simulator runs with workdir as its cwd
    workdir.mkdir(parents=True, exist_ok=True)
    job_file = workdir / "job.json"
    results = workdir / "results.json"
    results.unlink(missing_ok=True)
    job_file.write_text(json.dumps({**job, "results": str(results)}))
    log = workdir / "sim.log"
    log.unlink(missing_ok=True)
    kw = {
        "test_module": test_module,
        "hdl_toplevel": top,
        "hdl_toplevel_lang": "verilog",
        "build_dir": build_dir,
        "test_dir": workdir,
        "extra_env": {"FXPGA_SIM_JOB": str(job_file)},
        "waves": waves,
        "seed": seed,
        "results_xml": str(workdir / "results.xml"),
    }
    if simulator == "icarus":
        kw["timescale"] = ("1ns", "1ps")
        if waves:  # into the run's directory, not the (shared) model's
            kw["plusargs"] = [f"+dumpfile_path={workdir / f'{top}.fst'}"]
    r = _in_own_groups(get_runner(simulator))
    try:
        with patched_env(sim_env(simulator)), _output_to(log), sigterm_interrupts():
            r.test(**kw)
    except (SystemExit, Exception) as e:
        raise SimulationFailed(
            f"{simulator} simulation failed ({_tail(log)}); see {log}", workdir
        ) from e
    if not results.exists():
        raise SimulationFailed(
            f"{simulator} simulation ended without results ({_tail(log)}); see {log}", workdir
        )
    return json.loads(results.read_text()), log


def run_job(
    prog: Program,
    build_dir: Path,
    simulator: str,
    samples: np.ndarray,
    expected: np.ndarray,
    workdir: Path,
    *,
    seed: int = 0,
    stall: float = 0.2,
    steps: list[dict] | None = None,
    waves: bool = False,
) -> JobResult:
    """Run engine-order ``samples`` through the built model; compare with ``expected``."""
    check_stream_options(len(samples), seed, stall, waves)
    workdir = Path(workdir).resolve()
    job = {
        "samples": np.asarray(samples).astype(int).tolist(),
        "expected": np.asarray(expected).astype(int).tolist(),
        "out_size": prog.out_size, "seed": seed, "stall": stall, "steps": steps or [{}],
    }  # fmt: skip
    r, log = run_cocotb(build_dir, simulator, TEST_MODULE, job, workdir, seed=seed, waves=waves)
    wave = None
    if waves:
        found = sorted(workdir.glob("*.vcd")) + sorted(workdir.glob("*.fst"))
        wave = found[0] if found else None
    return JobResult(
        [x["got"] for x in r["results"]],
        [x["match"] for x in r["results"]],
        [x["cycles"] for x in r["results"]],
        r["wall_s"],
        r["sim_cycles"],
        log,
        wave,
    )


def check_stream_options(samples: int, seed: int, stall: float, waves: bool):
    """The bounds (``fxpga.limits``) on a simulation's images, seed, stall probability and
    waveforms, checked before anything is built or run."""
    check_range("samples", samples, 1, MAX_SAMPLES, "images per simulation")
    check_range("seed", seed, 0, MAX_SEED)
    check_range("stall", stall, 0.0, MAX_STALL, "a stall probability of 1 never ends")
    if waves and samples > MAX_WAVE_SAMPLES:
        raise FxpgaError(
            f"waveforms of {samples:,} images: record at most {MAX_WAVE_SAMPLES} (one "
            f"simulator run) with waves"
        )


def truncated_header(prog: Program, k: int) -> list[tuple[int, int]]:
    """``cfg`` writes that make the program stop after op ``k`` and output its result."""
    op = prog.ops[k]
    words = [k + 1, prog.in_size, op.out_size, op.out_buf, op.out_addr]
    return [(REGION_PROGRAM << 28 | i, w) for i, w in enumerate(words)]


def new_workdir(parent: Path | None, prefix: str) -> Path:
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    return Path(tempfile.mkdtemp(prefix=f"fxpga-{prefix}"))
