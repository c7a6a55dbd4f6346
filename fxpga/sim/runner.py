"""Build the engine's Verilog for an HDL simulator (cached) and run cocotb jobs on it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FxpgaError
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


# Simulator models kept in the cache; the least recently used go first. A Verilator model is
# ~1 MB once its build intermediates are gone (its precompiled headers alone were 140 MB), an
# Icarus one ~3 MB.
CACHE_ENTRIES = 200
# Verilator intermediates that running the model never reads: precompiled headers, objects,
# archives, make dependencies.
_BUILD_ONLY = ("*.gch", "*.o", "*.a", "*.d")
# A model directory without a BUILT stamp is either being built (leave it) or was abandoned.
_ABANDONED_S = 24 * 3600


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
    """Delete all but the ``keep`` most recently used models under ``root``; return them."""
    aged = []
    for d in root.iterdir() if root.is_dir() else ():
        t = _last_used(d) if d.is_dir() else None
        if t is not None:
            aged.append((t, d))
    aged.sort(reverse=True)
    gone = [d for _, d in aged[keep:]]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
        (d.parent / f"{d.name}.lock").unlink(missing_ok=True)
    return gone


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
    writes += [(REGION_BIAS << 28 | i, b) for i, b in enumerate(prog.bmem)]
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
    rebuild. Verilator's build intermediates are deleted once the model is built, and only the
    ``$FXPGA_SIM_CACHE_ENTRIES`` (default 200) most recently used models are kept.
    """
    env = sim_env(simulator)
    text = verilog if verilog is not None else engine_verilog(prog)
    extra = "".join(Path(p).read_text() for p in extra_sources)
    key = hashlib.sha256(f"{simulator}:{waves}:{top}:v2\n{text}{extra}".encode()).hexdigest()
    key = key[:16]
    d = cache_root() / f"{simulator}-{key}"
    keep = _cache_entries()
    d.mkdir(parents=True, exist_ok=True)
    # one builder per model: another process (a pytest-xdist worker, a second fxpga) that
    # wants the same model waits here, then finds it built
    with open(d.parent / f"{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(d, text, extra_sources, top, simulator, waves, env, keep, info)


def _build_locked(d, text, extra_sources, top, simulator, waves, env, keep, info) -> Path:
    from cocotb_tools.runner import get_runner

    stamp = d / "BUILT"
    if stamp.exists():
        (d / "USED").touch()
        return d
    src = d / f"{top}.v"
    src.write_text(text)
    log = d / "build.log"
    info(f"building the {simulator} model (once per design; log: {log})")
    t0 = time.monotonic()
    kw = {"sources": [src, *extra_sources], "hdl_toplevel": top, "build_dir": d, "waves": waves}
    if simulator == "verilator":
        kw["build_args"] = ["-Wno-fatal", "-Wno-WIDTH", "-O2"]
    else:
        kw["timescale"] = ("1ns", "1ps")
    try:
        with patched_env(env), _output_to(log):
            get_runner(simulator).build(**kw)
    except (SystemExit, Exception) as e:
        raise FxpgaError(f"{simulator} build failed ({_tail(log)}); see {log}") from e
    for pattern in _BUILD_ONLY:
        for f in d.glob(pattern):
            f.unlink()
    stamp.write_text(f"{time.monotonic() - t0:.1f} s\n")
    evict(cache_root(), keep)
    return d


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
    try:
        with patched_env(sim_env(simulator)), _output_to(log):
            get_runner(simulator).test(**kw)
    except (SystemExit, Exception) as e:
        raise FxpgaError(f"{simulator} simulation failed ({_tail(log)}); see {log}") from e
    if not results.exists():
        raise FxpgaError(f"{simulator} simulation ended without results ({_tail(log)}); see {log}")
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
        found = (
            sorted(workdir.glob("*.vcd"))
            + sorted(workdir.glob("*.fst"))
            + sorted(build_dir.glob("*.fst"))
        )
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
