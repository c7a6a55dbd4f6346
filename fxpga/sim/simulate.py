"""``fxpga simulate``: test images through the engine's Verilog, against golden and float."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hw.compiler import Program, chw_to_hwc
from ..limits import MAX_SEED
from ..progress import bar
from ..quant import golden
from ..quant.qformat import dequantize
from ..quant.qmodel import QModel
from ..quant.quantizer import sqnr_db
from . import runner

CHUNK = 100  # images per simulator run (one progress step)


to_engine_order = chw_to_hwc  # golden's C-order outputs → the order the engine streams


@dataclass
class SimReport:
    simulator: str
    samples: int
    mismatches: list[int]  # indices of images whose output differs from golden
    cycles: list[int]
    agree_float: float  # top-1 of the hardware == top-1 of the float model
    accuracy: float | None  # against labels
    macs: int
    lanes: int
    sim_cycles: int
    wall_s: float
    build_s: float
    first_bad_layer: str | None = None
    artifacts: dict = field(default_factory=dict)
    # without labels (a model that is not a classifier): the hardware's output against the
    # float model's, in its real units
    sqnr_db: float | None = None
    max_err: float | None = None

    @property
    def utilization(self) -> float:
        return self.macs / (self.lanes * float(np.mean(self.cycles)))

    @property
    def speed(self) -> float:
        return self.sim_cycles / self.wall_s if self.wall_s else 0.0

    def lines(self) -> list[str]:
        n, bad = self.samples, len(self.mismatches)
        if self.accuracy is None and self.sqnr_db is not None:
            fidelity = (
                f"output against the float model (no labels): SQNR {self.sqnr_db:.1f} dB, "
                f"max |error| {self.max_err:.4g}"
            )
        else:
            fidelity = f"top-1 agreement with the float model: {100 * self.agree_float:.2f}%" + (
                "" if self.accuracy is None
                else f"; accuracy against labels: {100 * self.accuracy:.2f}%"
            )  # fmt: skip
        out = [
            f"{self.simulator}: {n} images, {bad} mismatches against the golden model",
            fidelity,
            f"cycles per inference: min {min(self.cycles):,} mean {np.mean(self.cycles):,.0f} "
            f"max {max(self.cycles):,}; MAC utilization {100 * self.utilization:.1f}% "
            f"({self.lanes} lanes)",
            f"simulation: {self.sim_cycles:,} cycles in {self.wall_s:.1f} s = "
            f"{self.speed:,.0f} cycles/s (build {self.build_s:.1f} s)",
        ]  # fmt: skip
        if self.first_bad_layer:
            out.append(f"first layer whose output differs from golden: {self.first_bad_layer}")
        for k, v in self.artifacts.items():
            out.append(f"{k}: {v}")
        return out


def simulate(
    qm: QModel,
    prog: Program,
    x: np.ndarray,
    y: np.ndarray | None,
    simulator: str = "verilator",
    *,
    seed: int = 0,
    stall: float = 0.2,
    waves: bool = False,
    out_dir: Path | None = None,
    progress: bool = True,
    info=lambda msg: None,
) -> SimReport:
    """Run float images ``x`` (labels ``y``) through the engine's Verilog in ``simulator``.

    Without ``out_dir`` each simulator run gets a temporary directory, removed when the
    simulation ends (done, failed or interrupted), except the one of a failed run, whose log the
    error names; the artifacts of a mismatch are kept and listed in the report."""
    with runner.sigterm_interrupts(), _scratch() as made:
        return _simulate(
            qm, prog, x, y, simulator, seed, stall, waves, out_dir, progress, info, made
        )


@contextlib.contextmanager
def _scratch():
    """A list of the directories fxpga makes for itself: removed when the block ends, except
    those holding the log that a ``runner.SimulationFailed`` names."""
    made: list[Path] = []
    try:
        yield made
    except runner.SimulationFailed as e:
        made[:] = [d for d in made if not Path(e.workdir).resolve().is_relative_to(d.resolve())]
        raise
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def _simulate(qm, prog, x, y, simulator, seed, stall, waves, out_dir, progress, info, made):
    runner.check_stream_options(len(x), seed, stall, waves)
    xi = golden.quantize_input(qm, x)
    want = golden.run_int(qm, xi).reshape(len(x), -1)
    samples = prog.to_engine(xi)
    expected = prog.words(to_engine_order(want, prog.out_shape))
    t0 = time.monotonic()
    build_dir = runner.build(prog, simulator, waves=waves, info=info)
    build_s = time.monotonic() - t0

    got, match, cycles, sim_cycles, wall = [], [], [], 0, 0.0
    chunks = range(0, len(x), CHUNK)
    for k, i in enumerate(bar(chunks, desc=f"{simulator}", enabled=progress, unit="chunk")):
        work = runner.new_workdir(out_dir, f"run{k}-")
        if out_dir is None:
            made.append(work)
        r = runner.run_job(
            prog,
            build_dir,
            simulator,
            samples[i : i + CHUNK],
            expected[i : i + CHUNK],
            work,
            seed=(seed + k) % (MAX_SEED + 1),
            stall=stall,
            waves=waves,
        )
        got += r.got
        match += r.match
        cycles += r.cycles
        sim_cycles += r.sim_cycles
        wall += r.wall_s
    hw_out = prog.from_engine(np.array(got))
    hw_top1 = hw_out.argmax(axis=1)
    ref = qm.graph.float_forward(x).reshape(len(x), -1)
    report = SimReport(
        simulator, len(x), [i for i, ok in enumerate(match) if not ok], cycles,
        float(np.mean(hw_top1 == ref.argmax(axis=1))),
        None if y is None else float(np.mean(hw_top1 == y)),
        prog.total_macs, prog.config.lanes, sim_cycles, wall, build_s,
    )  # fmt: skip
    if y is None:
        fixed = dequantize(hw_out.reshape(len(x), -1), qm.output_fmt.fl)
        report.sqnr_db = sqnr_db(ref, fixed)
        report.max_err = float(np.max(np.abs(ref - fixed)))
    if report.mismatches:
        _explain(report, qm, prog, x, xi, samples, simulator, seed, out_dir, info, made)
    return report


def _explain(report, qm, prog, x, xi, samples, simulator, seed, out_dir, info, made):
    """Keep the first failing input and a waveform of it, and find the first bad layer by
    re-running it with the program cut after op 0, 1, … (rewriting the header over cfg).
    Without ``out_dir`` they go to a temporary directory, kept once the report names it."""
    i = report.mismatches[0]
    if out_dir:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir = runner.new_workdir(None, "mismatch-")
        made.append(out_dir)
    inter = golden.run_int(qm, xi[i : i + 1], keep=True)
    steps, checked = [], []  # after each op that completes its layer's output
    for k, op in enumerate(prog.ops):
        if not op.completes_layer:
            continue  # one group of a grouped conv: its layer's output is not whole yet
        checked.append(k)
        ref = to_engine_order(inter[op.out_layer].reshape(1, -1), (op.OP, op.POH, op.POW))[0]
        ref = prog.words(ref)
        steps.append(
            {
                "cfg": runner.truncated_header(prog, k),
                "samples": [0],
                "out_size": op.out_size,
                "expected": ref.tolist(),
            }
        )
    info(f"image {i} differs from golden: re-running it with waves, op by op")
    build_dir = runner.build(prog, simulator, waves=True, info=info)
    work = runner.new_workdir(out_dir, "mismatch-")
    r = runner.run_job(
        prog,
        build_dir,
        simulator,
        samples[i : i + 1],
        samples[i : i + 1],
        work,
        seed=seed,
        stall=0.0,
        steps=steps,
        waves=True,
    )
    for k, ok in zip(checked, r.match, strict=True):
        if not ok:
            op = prog.ops[k]
            fused = f" (with {', '.join(op.fused[1:])})" if len(op.fused) > 1 else ""
            report.first_bad_layer = f"op {k}: {op.name}{fused}"
            break
    failing = out_dir / "failing_input.npz"
    np.savez(failing, x=x[i : i + 1], x_int=xi[i : i + 1], index=i, engine_input=samples[i : i + 1])
    report.artifacts["failing input"] = str(failing)
    if r.waves:
        report.artifacts["waveform"] = str(r.waves)
    report.artifacts["simulator log"] = str(r.log)
    if out_dir in made:
        made.remove(out_dir)
