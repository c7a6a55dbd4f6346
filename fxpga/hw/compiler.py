"""Compiler: quantized model + ``EngineConfig`` → layer program, memory images, cycle estimate.

Each engine *op* is one conv/linear layer with the element-wise and pooling layers that follow
it fused into its post-processing: ``requantize → [relu] → [max|avg pool] → [relu]``. A linear
layer is a 1×1 convolution over a 1×1 map with ``F_in`` channels. A relu/pool that does not
follow a conv/linear runs as a 1×1 identity convolution (weight 1, shift 0), costing ``C`` MACs
per value instead of 1. "No pool" is a 1×1 max-pool with stride 1.

Memory layout (all addresses in elements):
- feature maps are stored **HWC** (channel fastest: ``(y·W + x)·C + c``) in buffers 0 and
  1, each map in a buffer and region ``_allocate`` places by liveness (a chain ping-pongs
  between the buffers at address 0; every op of a grouped conv split into ops writes its
  channels at ``out_base`` of a map with ``OP`` channels); the input arrives in buffer 0 at
  address 0 (``Program.to_engine`` reorders a CHW sample). The ``post_lanes`` channels a
  post-processor writes in one cycle are then consecutive addresses, which land in distinct
  banks (a buffer has ``EngineConfig.banks`` banks, bank = address mod banks). A flatten
  moves no data: the linear layer after it gets its weight columns permuted to HWC order
  instead.
- weights: lane ``l`` holds output channels ``o ≡ l (mod lanes)``; for group ``g`` (channels
  ``g·lanes … g·lanes + lanes − 1``) its CKK = KH·KW·C weights in (ky, kx, c) order start at
  ``w_base + g·CKK``.
- biases: entry ``b_base + g·lanes + l`` for channel ``g·lanes + l``, banked like the
  feature maps (``b_base`` is a multiple of ``post_lanes``).

Cycles: every conv output position costs ``max(KH·KW·C, lanes / post_lanes)`` cycles (the
post-processor handles ``post_lanes`` lanes per cycle), a pool-window position in padding
costs ``lanes / post_lanes``; each op adds a few cycles of sequencing and a drain
(``program_cycles``); descriptors are prefetched while the previous op runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..errors import FxpgaError
from ..limits import (
    BOARD_MULTIPLIERS,
    LARGEST_BOARD,
    MAX_ACC_BITS,
    MAX_AVG_POOL,
    MAX_LANES,
    MAX_MEMORY_DEPTH,
    MAX_OPERAND_BITS,
    MAX_OPS,
    MAX_WEIGHT_ENTRIES,
    MIN_ACC_BITS,
    MIN_OPERAND_BITS,
    check_range,
)
from ..quant import ir
from ..quant.qformat import QFormat, clip_bounds, signed_width
from ..quant.qmodel import QLayer, QModel

# the ops it runs: a pad only right before a conv (its zeros are that conv's padding), a clip
# as the saturation bounds of the op it ends up in
ENGINE_OPS = (
    "conv", "linear", "relu", "clip", "pad", "maxpool", "avgpool", "flatten", "add", "concat"
)  # fmt: skip
# the iCE40UP5K's SB_SPRAM256KA: 16K words of 16 bits (a write mask per nibble), four of them
SPRAM_DEPTH, SPRAM_WIDTH, SPRAM_COUNT = 16384, 16, 4
MAX_LEFT_SHIFT = 7  # requantization may scale up by at most 2^7 (fl_out - fl_in - fl_w <= 7)
# EngineConfig.channel_shifts: an output channel's shift is the op's plus an offset of this
# many bits, stored above its bias in the bias word (which the 32-bit configuration port
# writes whole)
CHANNEL_SHIFT_BITS = 4
MAX_CHANNEL_SHIFT = (1 << CHANNEL_SHIFT_BITS) - 1
BUS_BITS = 32

_DEPTH = (1, MAX_MEMORY_DEPTH, "the configuration port's index field is 20 bits")
_LANES = (
    f"the configuration port addresses {MAX_LANES} lanes; the largest board, the "
    f"{LARGEST_BOARD}, has {BOARD_MULTIPLIERS} multipliers"
)
_OPERAND = (MIN_OPERAND_BITS, MAX_OPERAND_BITS, "each lane is one 18x18 multiplier")
# EngineConfig's sizes: (lowest, highest, why) for check_range (fxpga/limits.py)
CONFIG_BOUNDS = {
    "lanes": (1, MAX_LANES, _LANES),
    "data_bits": _OPERAND,
    "weight_bits": _OPERAND,
    "acc_bits": (MIN_ACC_BITS, MAX_ACC_BITS, "an 18x18 product and 12 bits of headroom"),
    "fmap_depth": _DEPTH,
    "wmem_depth": _DEPTH,
    "bmem_depth": _DEPTH,
    "max_ops": (1, MAX_OPS, "the sequencer counts ops in 8 bits"),
    "post_lanes": (1, MAX_LANES, "at most one per lane"),
    "fmap_banks": (1, MAX_LANES, "at most one per lane"),
    "broadcast_copies": (1, MAX_LANES, "at most one per lane"),
    "weight_pack": (1, 16, "a word of one-bit weights in an 18-bit DP16KD port"),
}


@dataclass(frozen=True)
class EngineConfig:
    """The engine's parameters. ``None`` sizes a memory to the model being compiled."""

    lanes: int = 8
    data_bits: int = 8  # feature-map word (activations), signed
    weight_bits: int = 8  # weight word, signed
    acc_bits: int = 32  # accumulator (wraps modulo 2^acc_bits; see mac.py)
    fmap_depth: int | None = None  # elements per ping-pong buffer
    wmem_depth: int | None = None  # weights per lane
    bmem_depth: int | None = None  # biases (all lanes)
    max_ops: int | None = None  # program capacity
    post_lanes: int | None = None  # lanes post-processed per cycle (power of 2) [lanes/8]
    weight_store: str = "bram"  # "bram" (initialised) or "spram" (iCE40, loaded at run time)
    prefetch: bool = True  # fetch the next descriptor while an op runs (a second register)
    operand_regs: int = 0  # extra registers between the memories and the multipliers (fmax)
    # copies of the registers that broadcast the weight address and the activation to the
    # lanes (each drives lanes / copies of them: ECP5 fmax at many lanes); > 1 adds a cycle
    broadcast_copies: int = 1
    # clear each lane's accumulator as its window's sum is captured (a mask before the adder)
    # instead of keeping it running and subtracting snapshots: no lanes x acc_bits snapshot
    # registers (ECP5, whose accumulators are fabric; on iCE40 it keeps them out of SB_MAC16)
    acc_clear: bool = False
    # the feature-map writes wait a cycle in registers of each bank's own before their bank
    # rotation and another after it, before the memories (FeatureBuffer write_reg = 2): two
    # more drain cycles per op (ECP5 fmax at many lanes and banks: MobileNetV1-0.25's
    # rotation, fed from the post-processor, was the 64-lane ULX3S's critical path at 64.2
    # MHz; fed from one register per buffer, at 67.6)
    fmap_write_reg: bool = False
    # the weight memories' output register (ECP5: DP16KD's own) stands in for the first weight
    # operand register, which needs operand_regs >= 1: no extra cycle (ECP5 fmax at many lanes)
    weight_out_reg: bool = False
    # program words (header, descriptors) wait a cycle in a register after the program memory
    # (its block RAM output is slow): each descriptor fetch is a cycle longer (ECP5 fmax)
    program_read_reg: bool = False
    # average pooling over any window (3x3, DS-CNN's 25x5), exact: a multiplier per post-
    # processing lane divides by the window size; two more descriptor words. Off: windows of
    # 2^k values only (the divide is a shift)
    avg_divide: bool = False
    # grouped and depthwise convolution: one op per group of `lanes` output channels, each
    # reading its window of input channels (a descriptor word says how far the address jumps
    # to the next pixel). Lane l's weights are zero outside its own channels, so a depthwise
    # layer keeps one lane in `lanes` busy: correct, not yet fast
    depthwise: bool = False
    # graphs that branch (residual adds): an op may write either buffer at any address, and
    # its post-processor may add a tensor it reads from the buffer it writes (aligned,
    # saturated, then a ReLU: six more pipeline stages, a wide read port on each buffer);
    # six more descriptor words. Off: chains only, ping-ponging between the buffers
    branches: bool = False
    # banks per feature-map buffer (a power of two dividing lanes, at least post_lanes; None:
    # post_lanes). A depthwise op whose channels sit bank-aligned reads `banks` channels of a
    # pixel per cycle, one per lane, and takes lanes / banks cycles per tap instead of lanes
    fmap_banks: int | None = None
    # each feature-map bank's output waits a cycle in a register before the bank and buffer
    # muxes (the block RAMs' outputs are slow): one more cycle from a tap to its product,
    # so one more drain cycle per op (ECP5 fmax with many banks)
    fmap_read_reg: bool = False
    # "spram": each feature-map buffer is one iCE40UP5K SPRAM (16K words of 16 bits, a bank
    # in each 16 / banks-bit slice; single-ported), for maps the block RAM cannot hold (DS-CNN
    # on the iCEBreaker). Chains only (an op reads one buffer and writes the other), one
    # post-processing lane (one write per cycle), at most 16 / data_bits banks
    fmap_store: str = "bram"
    # a conv whose output channels leave lanes idle (ResNet-8's 16- and 32-channel stacks at
    # 64 lanes) may split its input channels over them instead: it reads `banks` channels
    # of a pixel per tap, one per lane (as a wide depthwise op), lanes o·banks … o·banks +
    # banks − 1 each sum a share of output channel o's window, and an adder tree sums them
    # before the accumulators (lanes / banks output channels a group). The compiler takes
    # it per op where it is faster. The tree's log2(banks) registered levels delay every
    # product as long: lanes x product-width x log2(banks) flip-flops (ECP5)
    channel_split: bool = False
    # the host may rewrite the weights at run time (Engine.cfg); off: the weights are the
    # bitstream's, and the weight memories have no write port (on the ULX3S its write
    # address's routes to every lane's block RAM were the critical path)
    weight_writes: bool = True
    # lanes whose weights share a memory word (all lanes read the same address): lane l's
    # weight is slice l mod pack of its group's word. Where a lane's weights run just over a
    # block RAM, a pair's take fewer blocks (the FC autoencoder's 4,240 a lane at 64 lanes:
    # three 2048 x 9 DP16KD each, five 1024 x 18 a pair). Baked weights only (no per-lane
    # write), at most 18 bits a word (a DP16KD's widest true-dual-port word)
    weight_pack: int = 1
    # the bias memories in LUT RAM (yosys `ram_style = "distributed"`; ECP5): their reads
    # leave a flip-flop, not a block RAM's 5.8 ns clock-to-out, and the block RAMs they
    # would take are free (MobileNetV1-0.25 on the ULX3S: a bias DP16KD 6.2 ns from its
    # post-processing lane was the critical path, 69.1 MHz for 75, with 201 of 208 DP16KD
    # used). Not for iCE40, which has no LUT RAM
    bias_lutram: bool = False
    # unsigned activations (formats of [0, 2^bits − 1]: ReLU outputs, quantize --unsigned):
    # the MAC operand is a bit wider (a stored word zero- or sign-extended per op, as its
    # input's format says), the post-processor's values too, and a descriptor word says which
    # of an op's tensors are unsigned. Off: signed activations only
    unsigned: bool = False
    # a requantization shift per output channel (weights with a format per channel): each
    # bias word carries its channel's offset from the op's shift (CHANNEL_SHIFT_BITS more
    # bits a word), which the post-processor adds per lane. Off: one shift per op
    channel_shifts: bool = False

    def __post_init__(self):
        for name in ("weight_store", "fmap_store"):
            if getattr(self, name) not in ("bram", "spram"):
                raise FxpgaError(
                    f"EngineConfig.{name} must be 'bram' or 'spram', not {getattr(self, name)!r}"
                )
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in (
                "prefetch",
                "acc_clear",
                "fmap_write_reg",
                "weight_out_reg",
                "program_read_reg",
                "avg_divide",
                "depthwise",
                "branches",
                "fmap_read_reg",
                "channel_split",
                "weight_writes",
                "bias_lutram",
                "channel_shifts",
                "unsigned",
            ):
                if not isinstance(v, bool):
                    raise FxpgaError(f"EngineConfig.{f.name} must be True or False, not {v!r}")
                continue
            if f.name in ("weight_store", "fmap_store") or (v is None and f.default is None):
                continue
            if f.name == "operand_regs":
                if v not in (0, 1, 2):
                    raise FxpgaError(f"EngineConfig.operand_regs must be 0, 1 or 2, not {v!r}")
                continue
            check_range(f"EngineConfig.{f.name}", v, *CONFIG_BOUNDS[f.name])
        if self.weight_store == "spram" and (self.lanes > 8 or self.weight_bits > 8):
            raise FxpgaError("SPRAM weights (iCE40UP5K) hold at most 8 lanes of 8-bit weights")
        if self.broadcast_copies > self.lanes:
            raise FxpgaError(
                f"EngineConfig.broadcast_copies={self.broadcast_copies} is more than the "
                f"{self.lanes} lanes it feeds"
            )
        if self.broadcast_copies > 1 and self.weight_store == "spram":
            raise FxpgaError("EngineConfig.broadcast_copies > 1 needs block-RAM weights")
        if self.weight_out_reg and (self.operand_regs < 1 or self.weight_store != "bram"):
            raise FxpgaError(
                "EngineConfig.weight_out_reg needs block-RAM weights and operand_regs >= 1 "
                "(the memories' output register replaces the first operand register)"
            )
        if self.avg_divide and self.data_bits > MAX_DIVIDE_DATA_BITS:
            raise FxpgaError(
                f"EngineConfig.avg_divide needs data_bits <= {MAX_DIVIDE_DATA_BITS} (its "
                f"reciprocals fill a 32-bit program word), not {self.data_bits}"
            )
        if self.channel_shifts and self.acc_bits + CHANNEL_SHIFT_BITS > BUS_BITS:
            raise FxpgaError(
                f"EngineConfig.channel_shifts needs acc_bits <= {BUS_BITS - CHANNEL_SHIFT_BITS} "
                f"(a bias and its {CHANNEL_SHIFT_BITS}-bit shift fill a {BUS_BITS}-bit "
                f"configuration word), not {self.acc_bits}"
            )
        if self.unsigned and self.data_bits + 1 > MAX_OPERAND_BITS:
            raise FxpgaError(
                f"EngineConfig.unsigned needs data_bits <= {MAX_OPERAND_BITS - 1} (an unsigned "
                f"word is a bit wider in the {MAX_OPERAND_BITS}-bit multipliers), not "
                f"{self.data_bits}"
            )
        if self.post_lanes is None:  # the fewest that keep a window's post-processing <= 8
            p = 1
            while self.lanes // p > 8 and self.lanes % (2 * p) == 0:
                p *= 2
            object.__setattr__(self, "post_lanes", p)
        p = self.post_lanes
        if p & (p - 1) or self.lanes % p:
            raise FxpgaError(
                f"EngineConfig.post_lanes must be a power of two dividing lanes="
                f"{self.lanes}, not {p}"
            )
        b = self.fmap_banks
        if b is not None and (b & (b - 1) or self.lanes % b or b < p):
            raise FxpgaError(
                f"EngineConfig.fmap_banks must be a power of two dividing lanes={self.lanes}, "
                f"at least post_lanes={p}, not {b}"
            )

        if self.fmap_store == "spram":
            self._check_spram_maps()
        if not self.weight_writes and self.weight_store != "bram":
            raise FxpgaError("EngineConfig.weight_writes=False needs weights in block RAM")
        k = self.weight_pack
        if k > 1 and (k & (k - 1) or k * self.weight_bits > 18 or self.weight_writes):
            raise FxpgaError(
                f"EngineConfig.weight_pack={k} must be a power of two, with baked weights "
                f"(weight_writes=False) and at most 18 bits a word ({self.weight_bits}-bit "
                "weights)"
            )
        if self.channel_split and self.banks < 2:
            raise FxpgaError(
                "EngineConfig.channel_split reads `banks` channels a tap: it needs fmap_banks "
                f">= 2 (lanes={self.lanes}, post_lanes={self.post_lanes})"
            )

    @property
    def wide_reads(self) -> bool:
        """Ops may read a channel window or ``banks`` channels a tap (the descriptor's
        ``kx_inc``, ``dw``, ...): ``depthwise`` or ``channel_split``."""
        return self.depthwise or self.channel_split

    def _check_spram_maps(self):
        why = []
        if self.branches:
            why.append("a graph that branches reads and writes one buffer in an op")
        if self.post_lanes != 1:
            why.append(f"they take one write per cycle, not post_lanes={self.post_lanes}")
        if self.data_bits * self.banks > SPRAM_WIDTH:
            why.append(
                f"{self.banks} banks of {self.data_bits}-bit words exceed its "
                f"{SPRAM_WIDTH}-bit word"
            )
        if (self.fmap_depth or 0) > SPRAM_DEPTH * self.banks:
            why.append(
                f"fmap_depth={self.fmap_depth} exceeds one SPRAM's {SPRAM_DEPTH} words of "
                f"{self.banks} value(s)"
            )
        spram = 2 + (-(-self.lanes // 2) if self.weight_store == "spram" else 0)
        if spram > SPRAM_COUNT:
            why.append(
                f"with {self.lanes} lanes' weights in SPRAM too they need {spram} of the "
                f"{SPRAM_COUNT} SPRAMs (at most {2 * (SPRAM_COUNT - 2)} lanes)"
            )
        if why:
            raise FxpgaError("EngineConfig.fmap_store='spram' (single-ported): " + "; ".join(why))

    @property
    def banks(self) -> int:
        """Banks per feature-map buffer: ``fmap_banks``, or ``post_lanes``."""
        return self.fmap_banks or self.post_lanes

    @property
    def items(self) -> int:
        """Cycles the post-processor spends on one window: lanes / post_lanes."""
        return self.lanes // self.post_lanes

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def for_model(cls, qm: QModel, lanes: int = 8, **overrides) -> EngineConfig:
        """The narrowest widths ``qm`` needs (at least 8-bit data/weights and a 16-bit
        accumulator, rounded up to a multiple of 4), and ``avg_divide`` where it averages
        over a window that is not a power of two, ``depthwise`` (with as many feature-map
        banks as the lanes and its depthwise layers' channels allow) where it has grouped
        convs and ``branches`` where its graph is not a chain; ``overrides`` win."""
        data = max([qm.input_fmt.bits] + [la.out_fmt.bits for la in qm.layers])
        weight = max([la.w_fmt.bits for la in qm.layers if la.w_fmt] + [2])
        acc = max(qm.max_acc_bits, data + 2)
        kw = {
            "lanes": lanes,
            "data_bits": max(8, data),
            "weight_bits": max(8, weight),
            "acc_bits": min(MAX_ACC_BITS, max(16, -(-acc // 4) * 4)),
            "avg_divide": any(
                isinstance(la.node, ir.AvgPool) and (k := math.prod(la.node.kernel)) & (k - 1)
                for la in qm.layers
            ),
            "depthwise": any(getattr(la.node, "groups", 1) > 1 for la in qm.layers),
            "branches": not qm.graph.is_chain,
            "channel_shifts": any(la.per_channel for la in qm.layers if la.w_fmt is not None),
            "unsigned": not all(
                f.signed for f in [qm.input_fmt] + [la.out_fmt for la in qm.layers]
            ),
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**kw)
        if cfg.depthwise and cfg.fmap_banks is None:
            # depthwise ops read a pixel's channels from the banks: as many as the lanes allow
            # and every depthwise layer's channel count is a multiple of
            banks = cfg.lanes & -cfg.lanes
            for la in qm.layers:
                if getattr(la.node, "groups", 1) > 1:
                    c = la.node.in_shape[0]
                    banks = min(banks, c & -c)
            if cfg.fmap_store == "spram":  # as many as one SPRAM word holds
                banks = min(banks, 1 << (SPRAM_WIDTH // cfg.data_bits).bit_length() - 1)
            if banks > cfg.post_lanes:
                cfg = dataclasses.replace(cfg, fmap_banks=banks)
        return cfg


# Fields of one layer descriptor, in program order. Values are signed integers; the
# sequencer uses them directly, so everything the address generator needs is precomputed:
# "*_max" is a loop counter's last value (the loop's extent − 1), "lead" the idle cycles
# before a window's taps, addresses are relative to the buffer they index.
DESC_FIELDS = (
    "in_buf", "c_max", "H", "W", "kx_max", "CKK", "lead", "WC", "OH", "OW",
    "dy_max", "dx_max", "py_max", "px_max", "g_max", "O", "O_last",
    "out_base", "w_base", "b_base",
    "oy0", "ox0", "iy0", "ix0", "xc0", "ra0",
    "SH", "SW", "SWC", "SHWC", "PSH", "PSW", "PSH_SH", "PSW_SW", "PSW_SWC", "PSH_SHWC",
    "shift", "qmin", "qmax", "relu_pre", "relu_post", "pool_avg", "avg_shift",
)  # fmt: skip
# with EngineConfig.avg_divide: an average pool divides by its window's k as a multiply by
# avg_mul = ceil(2^S / 2k) and a shift by S (avg_divide_shift), after adding avg_off
AVG_FIELDS = ("avg_mul", "avg_off")
MAX_DIVIDE_DATA_BITS = 12  # avg_mul < 2^(data_bits + 18) must fit a 32-bit program word


# with EngineConfig.branches: the buffer an op writes, and its residual add: the other
# operand is read at (output address + skip_off) of that buffer; each operand is aligned by a
# rounding shift (a_shift: the op's own value, b_shift: the other) and saturated, the sum is
# saturated and add_relu'd
BRANCH_FIELDS = ("out_buf", "add", "skip_off", "a_shift", "b_shift", "add_relu")
# with EngineConfig.unsigned: which of an op's tensors are unsigned (SIGN_* bits)
SIGN_FIELDS = ("signs",)
SIGN_IN, SIGN_SKIP, SIGN_OUT = 1, 2, 4  # its input, an add's other operand, its output


def desc_fields(cfg: EngineConfig) -> tuple[str, ...]:
    """The descriptor's fields on an engine built with ``cfg``, in program order."""
    return (
        DESC_FIELDS
        + (("kx_inc", "dw", "g_c", "w_g") if cfg.wide_reads else ())
        + (AVG_FIELDS if cfg.avg_divide else ())
        + (BRANCH_FIELDS if cfg.branches else ())
        + (SIGN_FIELDS if cfg.unsigned else ())
    )


def avg_divide_shift(data_bits: int) -> int:
    """``S``: ``(n · ceil(2^S / 2k)) >> S == n // 2k`` for every ``n < 2^(data_bits + 10)``
    and window ``k ≤ 256`` (``qformat.reciprocal``: ``N + ceil(log2 2k)``, 2k ≤ 512)."""
    return data_bits + 10 + 9


def avg_divide_fields(k: int, data_bits: int) -> dict[str, int]:
    """``avg_mul``, ``avg_off`` of an average over ``k`` values of ``data_bits``: the pool sum
    ``Σ`` becomes ``n = 2Σ + avg_off = 2(Σ + k·2^(D−1)) + k ≥ 0``, and
    ``((n · avg_mul) >> S) − 2^(D−1) = floor((2Σ + k) / 2k)``, the golden model's average."""
    S = avg_divide_shift(data_bits)
    return {"avg_mul": -(-(1 << S) // (2 * k)), "avg_off": k * ((1 << data_bits) + 1)}


@dataclass
class Op:
    """One engine op (a conv/linear with fused post-processing), as the hardware sees it."""

    name: str  # the conv/linear layer (or "<node>:identity")
    fused: list[str]  # names of the IR nodes fused into it, in order (itself first)
    in_buf: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    SH: int
    SW: int
    PH: int
    PW: int
    OH: int
    OW: int
    O: int
    PKH: int = 1
    PKW: int = 1
    PSH: int = 1
    PSW: int = 1
    PPH: int = 0
    PPW: int = 0
    pool_avg: int = 0
    relu_pre: int = 0
    relu_post: int = 0
    shift: int = 0  # with extra_shift: the least of its channels' shifts
    # (O,) ints >= 0 or None: output channel o requantizes by shift + extra_shift[o]
    extra_shift: np.ndarray | None = None
    sat: tuple[int, int] | None = None  # saturation bounds, tighter than out_fmt's for a clip
    out_fmt: QFormat | None = None  # the conv/linear's (its requantizer's)
    in_fmt: QFormat | None = None
    # the tensor it stores (after its fused layers: an add's, a concat's), an add's other
    # operand's (compile_model sets them)
    stored_fmt: QFormat | None = None
    skip_fmt: QFormat | None = None
    w_base: int = 0
    b_base: int = 0
    weights: np.ndarray | None = None  # (O, C, KH, KW) ints
    bias: np.ndarray | None = None  # (O,) ints, accumulator scale
    acc_bits: int = 0
    macs: int = 0
    out_shape: tuple = ()
    # one group of a grouped conv: it reads input channels c0 … c0 + C − 1 of a map with CP
    # channels and writes output channels o0 … o0 + O − 1 of a map with OP channels
    CP: int | None = None
    OP: int | None = None
    c0: int = 0
    o0: int = 0
    out_layer: str = ""  # the IR layer whose output (or part of it) this op writes
    # a depthwise op (one input channel per output, C = O): each lane keeps only its own
    # channel's KH x KW weights, and the engine zeroes the other lanes' weights at each tap.
    # 1: one channel per tap; 3 (bank-aligned): `banks` channels per tap, one per lane.
    # 2: not depthwise, a channel-split op (EngineConfig.channel_split): `banks` channels
    # per tap, lane o·banks + j summing output channel o's channels ≡ j (mod banks)
    dw: int = 0
    banks: int = 1  # with dw = 2, 3: the channels each tap reads
    # a depthwise op over several groups of `lanes` channels (one op per layer, not one per
    # group): group g reads the window of C channels from c0 + g·g_c; 0: one window
    g_c: int = 0
    # where it reads and writes (compile_model's allocation): the tensors (IR names), the
    # buffers and the base addresses of their regions
    src: str = ir.INPUT
    dst: str = ""
    out_buf: int = 1
    in_addr: int = 0
    out_addr: int = 0
    # a residual add (EngineConfig.branches): the other operand `skip` (its region at
    # skip_addr of out_buf), the alignment shifts of this op's value (a) and skip's (b) to the
    # add's format, a ReLU after the sum
    skip: str | None = None
    skip_addr: int = 0
    add: int = 0
    a_shift: int = 0
    b_shift: int = 0
    add_relu: int = 0
    # the layer's output is whole once this op has run (the last op of a split layer, the
    # last writer of a concat): compile_model sets it
    completes_layer: bool = True

    def __post_init__(self):
        self.CP = self.CP or self.C
        self.OP = self.OP or self.O

    @property
    def CKK(self) -> int:
        return self.C * self.KH * self.KW

    @property
    def taps(self) -> int:
        """Taps per window: KH·KW·C, or for a bank-aligned depthwise op KH·KW per
        ``banks`` channels."""
        return self.KH * self.KW * self.passes if self.dw in (2, 3) else self.CKK

    @property
    def passes(self) -> int:
        """The channel loop's count: C, or C / banks (rounded up) for a wide depthwise op."""
        return -(-self.C // self.banks) if self.dw in (2, 3) else self.C

    @property
    def lane_weights(self) -> int:
        """Weights each lane keeps per group: its taps, or a depthwise op's kernel."""
        return self.KH * self.KW if self.dw & 1 else self.taps

    @property
    def bounds(self) -> tuple[int, int]:
        """What requantized values saturate to: the output format's range, or a clip's."""
        return self.sat or (self.out_fmt.qmin, self.out_fmt.qmax)

    @property
    def POH(self) -> int:
        return (self.OH + 2 * self.PPH - self.PKH) // self.PSH + 1

    @property
    def POW(self) -> int:
        return (self.OW + 2 * self.PPW - self.PKW) // self.PSW + 1

    def groups(self, lanes: int) -> int:
        return -(-self.O // self.group_channels(lanes))

    def group_channels(self, lanes: int) -> int:
        """Output channels a group computes: ``lanes``, or ``lanes / banks`` channel-split."""
        return lanes // self.banks if self.dw == 2 else lanes

    @property
    def in_size(self) -> int:
        return self.CP * self.H * self.W

    @property
    def out_size(self) -> int:
        return self.OP * self.POH * self.POW

    def descriptor(
        self,
        lanes: int,
        post_lanes: int = 1,
        divide_bits: int | None = None,
        depthwise: bool = False,
        branches: bool = False,
        unsigned: bool = False,
    ) -> dict[str, int]:
        """The descriptor words; ``depthwise``: the engine reads channel windows
        (``EngineConfig.depthwise``: ``kx_inc``); ``divide_bits``: it divides averages by
        multiplying (``EngineConfig.avg_divide``) on ``divide_bits``-bit data; ``branches``:
        it writes either buffer and adds (``EngineConfig.branches``); ``unsigned``: it takes
        unsigned tensors (``EngineConfig.unsigned``: ``signs``)."""
        G = self.groups(lanes)
        C, W = self.CP, self.W
        iy0 = -self.PPH * self.SH - self.PH
        ix0 = -self.PPW * self.SW - self.PW
        d = {
            "in_buf": self.in_buf, "c_max": self.passes - 1, "H": self.H, "W": W,
            "kx_max": self.KW - 1,
            "CKK": self.taps, "lead": max(0, lanes // post_lanes - self.taps), "WC": W * C,
            "OH": self.OH, "OW": self.OW, "dy_max": self.PKH - 1, "dx_max": self.PKW - 1,
            "py_max": self.POH - 1, "px_max": self.POW - 1, "g_max": G - 1, "O": self.OP,
            "O_last": self.O - (G - 1) * self.group_channels(lanes),
            "out_base": self.out_addr + self.o0,
            "w_base": self.w_base,
            "b_base": self.b_base // post_lanes,
            "oy0": -self.PPH, "ox0": -self.PPW, "iy0": iy0, "ix0": ix0, "xc0": ix0 * C,
            "ra0": self.in_addr + iy0 * W * C + self.c0,
            "SH": self.SH, "SW": self.SW, "SWC": self.SW * C, "SHWC": self.SH * W * C,
            "PSH": self.PSH, "PSW": self.PSW, "PSH_SH": self.PSH * self.SH,
            "PSW_SW": self.PSW * self.SW, "PSW_SWC": self.PSW * self.SW * C,
            "PSH_SHWC": self.PSH * self.SH * W * C,
            "shift": self.shift, "qmin": self.bounds[0], "qmax": self.bounds[1],
            "relu_pre": self.relu_pre, "relu_post": self.relu_post, "pool_avg": self.pool_avg,
            "avg_shift": self.avg_shift,
        }  # fmt: skip
        assert tuple(d) == DESC_FIELDS
        if depthwise:  # from the last channel read to the next pixel's first
            d["kx_inc"] = C - (self.passes - 1) * (self.banks if self.dw in (2, 3) else 1)
            d["dw"] = self.dw
            d["g_c"], d["w_g"] = self.g_c, self.lane_weights
        elif self.C != C or self.dw:
            raise FxpgaError(f"op '{self.name}' reads a channel window: it needs depthwise")
        if divide_bits is not None:
            k = self.PKH * self.PKW if self.pool_avg else 1
            d |= avg_divide_fields(k, divide_bits)
        if branches:
            d |= {
                "out_buf": self.out_buf, "add": self.add,
                "skip_off": self.skip_addr - self.out_addr if self.add else 0,
                "a_shift": self.a_shift, "b_shift": self.b_shift, "add_relu": self.add_relu,
            }  # fmt: skip
        elif self.add or self.out_buf != 1 - self.in_buf:
            what = "adds" if self.add else "writes the buffer it reads"
            raise FxpgaError(f"op '{self.name}' {what}: it needs EngineConfig.branches")
        if unsigned:
            d["signs"] = self.signs
        elif self.signs:
            raise FxpgaError(
                f"op '{self.name}' has unsigned tensors: it needs EngineConfig.unsigned"
            )
        return d

    @property
    def signs(self) -> int:
        """Which of its tensors are unsigned: ``SIGN_IN | SIGN_SKIP | SIGN_OUT`` bits."""
        return (
            SIGN_IN * int(not self.in_fmt.signed)
            + SIGN_SKIP * int(self.skip_fmt is not None and not self.skip_fmt.signed)
            + SIGN_OUT * int(not self.stored_fmt.signed)
        )

    @property
    def avg_shift(self) -> int:
        """log2 of an average pool's window, when it is a power of two (else 0: divided)."""
        k = self.PKH * self.PKW
        return k.bit_length() - 1 if self.pool_avg and not k & (k - 1) else 0

    def window_positions(self):
        """(valid, count) of conv-output positions visited, per group (pool loops included)."""
        valid = pad = 0
        for py in range(self.POH):
            for dy in range(self.PKH):
                oy = py * self.PSH - self.PPH + dy
                for px in range(self.POW):
                    for dx in range(self.PKW):
                        ox = px * self.PSW - self.PPW + dx
                        if 0 <= oy < self.OH and 0 <= ox < self.OW:
                            valid += 1
                        else:
                            pad += 1
        return valid, pad


# Timing constants shared with the hardware (engine.py asserts them):
TAP_LATENCY = 3  # TapGenerator.LATENCY: the first tap leaves 3 cycles after the op starts
TAP_TO_ACC = 4  # a tap issued in cycle t is in the accumulators in cycle t + 4 (tap_to_acc: more)
POST_LATENCY = 11  # PostProcessor.LATENCY
ADD_STAGES = 6  # PostProcessor.ADD_STAGES: the residual add's (EngineConfig.branches)


def run_cycles(op: Op, cfg: EngineConfig) -> int:
    """Cycles the address generator is busy: Σ over windows of max(taps, items)."""
    valid, pad = op.window_positions()
    return op.groups(cfg.lanes) * (valid * max(op.taps, cfg.items) + pad * cfg.items)


def drain_cycles(cfg: EngineConfig) -> int:
    """Cycles the sequencer waits after the last window for the final writes to land."""
    # the divider's product has a stage of its own, the residual add six
    post = POST_LATENCY + int(cfg.avg_divide) + ADD_STAGES * int(cfg.branches)
    return tap_to_acc(cfg) + post + cfg.items - 1 + 2 * int(cfg.fmap_write_reg)


def tap_to_acc(cfg: EngineConfig) -> int:
    """Cycles from a tap leaving the address generator to its product in the accumulators
    (with ``channel_split``, through the adder tree's log2(banks) levels)."""
    tree = cfg.banks.bit_length() - 1 if cfg.channel_split else 0
    return (
        TAP_TO_ACC
        + cfg.operand_regs
        + int(cfg.broadcast_copies > 1)
        + int(cfg.fmap_read_reg)
        + tree
    )


def fetch_words(cfg: EngineConfig) -> int:
    """``NF``, the descriptor words, plus the cycle ``program_read_reg`` adds to a fetch: a
    descriptor fetch is busy ``fetch_words + 1`` cycles."""
    return len(desc_fields(cfg)) + int(cfg.program_read_reg)


def program_cycles(ops: list[Op], cfg: EngineConfig) -> list[int]:
    """Exact cycles per op, as the sequencer spends them (engine.py), with ``F`` =
    ``fetch_words`` (``NF``, the descriptor words, + 1 with ``program_read_reg``):

    NEXT (wait for the descriptor: for the first op 1 cycle if the input is longer than
    ``F``, the fetch then overlapping the input, else ``F + 2``; later
    ``1 + max(0, F − 1 − run − drain)`` with prefetch, ``F + 3`` without), START (1), RUN
    (``run + 1`` with ``run = run_cycles + TAP_LATENCY − 1``: the last cycle sees ``done``),
    DRAIN (``drain_cycles``). With prefetch the descriptor of op k+1 is read (``F + 1``
    cycles) while op k runs.
    """
    nf, drain = fetch_words(cfg), drain_cycles(cfg)
    out, prev_run = [], None
    first = 1 if ops[0].in_size > nf else nf + 2  # op 0's fetch hides behind a long input
    for op in ops:
        run = run_cycles(op, cfg) + TAP_LATENCY - 1
        if prev_run is None:
            wait = first
        elif not cfg.prefetch:  # FETCH (1) then the fetch itself
            wait = nf + 3
        else:
            wait = 1 + max(0, nf - 1 - prev_run - drain)
        out.append(wait + 1 + run + 1 + drain)
        prev_run = run
    return out


def chw_to_hwc(x: np.ndarray, shape) -> np.ndarray:
    """(N, C·H·W) values in C-order for tensors of ``shape`` (C, H, W) → (N, ·) in HWC order,
    the order the engine stores feature maps in."""
    c, h, w = shape
    return np.asarray(x).reshape(len(x), c, h * w).transpose(0, 2, 1).reshape(len(x), -1)


def to_words(x: np.ndarray, bits: int) -> np.ndarray:
    """Values (signed, or unsigned below ``2^bits``) → the ``bits``-bit words the engine
    stores and streams, read as two's complement."""
    half = 1 << (bits - 1)
    return (np.asarray(x, dtype=np.int64) + half) % (2 * half) - half


def from_words(w: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """``to_words``' inverse for a tensor that is ``signed`` or not."""
    w = np.asarray(w, dtype=np.int64)
    return w if signed else w & ((1 << bits) - 1)


def hwc_to_chw(y: np.ndarray, shape) -> np.ndarray:
    """The inverse of ``chw_to_hwc``."""
    c, h, w = shape
    return np.asarray(y).reshape(len(y), h * w, c).transpose(0, 2, 1).reshape(len(y), -1)


@dataclass
class Program:
    """Everything the engine needs to run a model: ops, memory images, sizes and estimates."""

    config: EngineConfig
    ops: list[Op]
    in_size: int
    out_size: int
    out_buf: int
    fmap_depth: int
    wmem: list[list[int]]  # per lane
    bmem: list[int]
    input_fmt: QFormat
    output_fmt: QFormat
    estimate: list[int] = field(default_factory=list)  # cycles per op

    in_shape: tuple = ()  # (C, H, W) of the input as the engine stores it
    out_shape: tuple = ()  # (C, H, W) of the output as the engine stores it
    out_base: int = 0  # where the output starts in buffer out_buf
    # each bias's channel's offset from its op's shift (EngineConfig.channel_shifts)
    bshift: list[int] = field(default_factory=list)

    @property
    def bias_words(self) -> list[int]:
        """The bias memory's words: the biases, and with ``channel_shifts`` each one's shift
        offset above its ``acc_bits`` (two's complement) bits."""
        if not self.config.channel_shifts:
            return list(self.bmem)
        A = self.config.acc_bits
        mask = (1 << A) - 1
        return [b & mask | e << A for b, e in zip(self.bmem, self.bshift, strict=True)]

    def split_bias_word(self, word: int) -> tuple[int, int]:
        """A bias memory word → (the bias, its channel's shift offset)."""
        if not self.config.channel_shifts:
            return word, 0
        A = self.config.acc_bits
        return int(to_words(word, A)), word >> A

    @property
    def bias_word_bits(self) -> int:
        return self.config.acc_bits + CHANNEL_SHIFT_BITS * self.config.channel_shifts

    @property
    def wmem_depth(self) -> int:
        """Weights per lane (at least 1: the depth of a memory sized to this program)."""
        return max(1, len(self.wmem[0]))

    @property
    def bmem_depth(self) -> int:
        """Biases, all lanes (at least 1)."""
        return max(1, len(self.bmem))

    @property
    def descriptors(self) -> list[dict[str, int]]:
        cfg = self.config
        bits = cfg.data_bits if cfg.avg_divide else None
        return [
            op.descriptor(
                cfg.lanes, cfg.post_lanes, bits, cfg.wide_reads, cfg.branches, cfg.unsigned
            )
            for op in self.ops
        ]

    def to_engine(self, x: np.ndarray) -> np.ndarray:
        """(N, ...) integer samples in C-order → (N, in_size) words in the engine's HWC
        order."""
        return to_words(chw_to_hwc(x, self.in_shape), self.config.data_bits)

    def from_engine(self, y: np.ndarray) -> np.ndarray:
        """(N, out_size) words from the engine (HWC) → (N, out_size) integers in C-order, as
        golden's."""
        y = from_words(y, self.config.data_bits, self.output_fmt.signed)
        return hwc_to_chw(y, self.out_shape)

    def words(self, y: np.ndarray) -> np.ndarray:
        """Integers in the engine's order → the words it streams (``to_words``)."""
        return to_words(y, self.config.data_bits)

    @property
    def total_macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def total_cycles(self) -> int:
        return sum(self.estimate)

    def utilization(self, cycles: int | None = None) -> float:
        c = self.total_cycles if cycles is None else cycles
        return self.total_macs / (self.config.lanes * c) if c else 0.0


@dataclass
class _Group:
    """One engine op's layers: the conv/linear (None: a 1x1 identity), a pad before it, and
    the post-processing layers fused after it (a residual add among them: ``skip`` is its
    other operand); ``src`` is the stored tensor its taps read."""

    mac: QLayer | None
    follow: list[QLayer]
    pad: QLayer | None = None
    src: str = ir.INPUT
    skip: str | None = None
    skip_i: int = 1  # which of the add's inputs skip is
    # it writes its channels of a concat: (the concat layer, which input it is, the channel
    # offset), aligned to the concat's format
    cat: tuple[QLayer, int, int] | None = None

    @property
    def out(self) -> str:
        """The stored tensor it writes: its last layer's output (or the concat's)."""
        if self.cat is not None:
            return self.cat[0].name
        return self.follow[-1].name if self.follow else self.mac.name


def _fuse(qm: QModel) -> tuple[list[_Group], dict[str, str]]:
    """Split the graph (in topological order) into engine ops; also returns the flattens that
    move no data, as tensor → the stored tensor it is.

    After a conv/linear an op takes ``[ReLU] [pool] [ReLU] [add [ReLU]]``; a clip wherever its
    clamp can be the requantizer's saturation (before the pool, or after a max pool, with which
    it commutes; not after an average or the add); a pad only directly before a conv, whose
    padding it becomes. A layer joins the op before it only if it reads that op's latest layer
    and nothing else reads that. A residual add joins the op producing one operand (the other
    is read from feature memory); a concat costs nothing where each input's op, read by the
    concat alone, writes its channels of the concat's map (aligned to its format), and an
    identity op per other input copies it there; anything else starts an identity op."""
    groups: list[_Group] = []
    readers = {k: [n.name for n in v] for k, v in qm.graph.consumers().items()}
    alias: dict[str, str] = {}  # flatten → the tensor it reshapes
    state = None  # what the current op can still absorb: pre, pool, post, add, or None
    avg = False  # the current op averages
    tail = None  # the current op's latest layer
    pad = None
    for la in qm.layers:
        n = la.node
        ins = [alias.get(i, i) for i in n.inputs]
        if pad is not None and not (isinstance(n, ir.Conv) and n.inputs == (pad.name,)):
            raise FxpgaError(
                f"{pad.node.where()}: the engine runs a pad only directly before a conv (as its "
                f"padding); this one is followed by a {n.op}"
            )
        if isinstance(n, ir.Pad):
            if len(readers[n.name]) > 1:
                raise FxpgaError(f"{n.where()}: the engine runs a pad read by one conv only")
            pad = la
            continue
        joins = tail is not None and ins[0] == tail and readers[tail] == [n.name]
        if n.has_weights:
            src = alias.get(pad.node.inputs[0], pad.node.inputs[0]) if pad else ins[0]
            groups.append(_Group(la, [], pad, src))
            state, avg, pad, tail = "pre", False, None, n.name
            continue
        if isinstance(n, ir.Flatten):
            if joins:
                groups[-1].follow.append(la)
                tail = n.name
            else:
                alias[n.name] = ins[0]
            continue
        if isinstance(n, ir.Concat):
            by_out = {g.out: g for g in groups}
            offset = 0
            for i, x in enumerate(ins):
                g = by_out.get(x)
                if (
                    g is not None
                    and readers[x] == [n.name]
                    and g.skip is None
                    and g.cat is None
                    and ins.count(x) == 1
                ):
                    g.cat = (la, i, offset)
                else:  # an identity op copies it into its channels
                    groups.append(_Group(None, [], src=x, cat=(la, i, offset)))
                offset += qm.graph.shape_of(n.inputs[i])[0]
            state, tail = None, None  # written by several ops: nothing fuses after it
            continue
        if isinstance(n, ir.Add):
            if len(ins) != 2:
                raise FxpgaError(f"{n.where()}: the engine adds two tensors, not {len(ins)}")
            own = tail if tail in ins and state in ("pre", "pool", "post", None) else None
            if own is not None and readers[own] == [n.name] and ins[0] != ins[1]:
                groups[-1].follow.append(la)
                groups[-1].skip_i = int(own == ins[0])
                groups[-1].skip = ins[groups[-1].skip_i]
            else:  # an identity op reads one operand, its post-processing adds the other
                groups.append(_Group(None, [la], src=ins[0], skip=ins[1]))
            state, avg, tail = "add", False, n.name
            continue
        ok = joins and (
            (isinstance(n, ir.ReLU) and state in ("pre", "post", "add"))
            or (isinstance(n, ir.MaxPool | ir.AvgPool) and state in ("pre", "pool"))
            or (isinstance(n, ir.Clip) and state not in ("add", "done") and not avg)
        )
        if not ok:
            groups.append(_Group(None, [], src=ins[0]))
            state, avg = "pre", False
        groups[-1].follow.append(la)
        tail = n.name
        if isinstance(n, ir.ReLU):
            state = {"pre": "pool", "add": "done"}.get(state)
        elif isinstance(n, ir.MaxPool | ir.AvgPool):
            state, avg = "post", isinstance(n, ir.AvgPool)
        # a clip leaves the state as it was: it is the saturation, not a stage
    if pad is not None:
        raise FxpgaError(f"{pad.node.where()}: the engine runs a pad only directly before a conv")
    return groups, alias


def _make_ops(
    group: _Group,
    in_fmt: QFormat,
    in_shape,
    where: str,
    cfg: EngineConfig,
) -> list[Op]:
    """The engine ops of one fused group: one op, or one per ``lanes`` output channels of a
    grouped conv. ``in_fmt``, ``in_shape``: the tensor it reads, as stored (C, H, W).
    Buffers and addresses come later (_allocate)."""
    divide, depthwise, lanes = cfg.avg_divide, cfg.depthwise, cfg.lanes
    mac, follow = group.mac, group.follow
    if mac is not None:
        n = mac.node
        if isinstance(n, ir.Conv):
            C, H, W = n.in_shape
            O, _, KH, KW = n.weight.shape
            SH, SW = n.stride
            PH, PW = n.padding  # top and left: bottom and right zeros come from reading past
            _, OH, OW = n.out_shape  # the map's edge, and the output size says how far
            if group.pad is not None:  # a pad before it: its zeros are the conv's padding
                left, _, top, _ = group.pad.node.pads
                C, H, W = group.pad.node.in_shape
                PH, PW = PH + top, PW + left
            w = mac.w
        else:
            (C,) = n.in_shape
            H = W = KH = KW = SH = SW = OH = OW = 1
            PH = PW = 0
            (O,) = n.out_shape
            w = mac.w.reshape(O, C, 1, 1)
        shift, extra = _channel_shifts(mac)
        op = Op(
            n.name,
            [n.name, group.pad.name] if group.pad else [n.name],  # itself first
            0,
            C,
            H,
            W,
            KH,
            KW,
            SH,
            SW,
            PH,
            PW,
            OH,
            OW,
            O,
            shift=shift,
            extra_shift=extra,
            out_fmt=mac.out_fmt,
            in_fmt=mac.in_fmt,
            weights=w,
            bias=mac.b,
            acc_bits=mac.acc_bits,
        )
    else:  # identity 1x1 convolution
        what = f"{follow[0].name}:identity" if follow else f"{group.src}:into:{group.out}"
        op = _identity_op(what, in_shape, in_fmt, where)
    seen_pool = False
    for la in follow:
        n = la.node
        op.fused.append(n.name)
        if isinstance(n, ir.Add):
            op.add, op.skip = 1, group.skip
            op.skip_fmt = la.in_fmts[group.skip_i]
            if la.out_fmt.bits != cfg.data_bits:
                raise FxpgaError(
                    f"{where}: layer '{n.name}': the engine adds at data_bits={cfg.data_bits}, "
                    f"this add's output has {la.out_fmt.bits} bits"
                )
            own, other = la.in_fmts[1 - group.skip_i], la.in_fmts[group.skip_i]
            op.a_shift = _align_shift(own, la.out_fmt, cfg.data_bits)
            op.b_shift = _align_shift(other, la.out_fmt, cfg.data_bits)
        elif isinstance(n, ir.ReLU) and op.add:
            op.add_relu = 1
        elif isinstance(n, ir.Clip):  # its clamp is the saturation (it commutes to there)
            qlo, qhi = clip_bounds(la.in_fmt, n.lo, n.hi)
            lo, hi = op.bounds
            op.sat = (max(lo, qlo), min(hi, qhi))
        elif isinstance(n, ir.ReLU):
            if seen_pool:
                op.relu_post = 1
            else:
                op.relu_pre = 1
        elif isinstance(n, ir.MaxPool | ir.AvgPool):
            seen_pool = True
            op.PKH, op.PKW = n.kernel
            op.PSH, op.PSW = n.stride
            op.PPH, op.PPW = n.padding
            if isinstance(n, ir.AvgPool):
                k = op.PKH * op.PKW
                if k & (k - 1) and not divide:
                    raise FxpgaError(
                        f"{where}: layer '{n.name}': avg-pool over {op.PKH}x{op.PKW} = {k} "
                        f"elements; this engine divides by powers of two only (build it with "
                        f"EngineConfig.avg_divide for any window)"
                    )
                if k > MAX_AVG_POOL:
                    raise FxpgaError(
                        f"{where}: layer '{n.name}': avg-pool over {op.PKH}x{op.PKW} = {k} "
                        f"elements; the engine's pool register sums at most {MAX_AVG_POOL}"
                    )
                op.pool_avg = 1
    # an identity op's products are overhead, not the model's: they count no MACs
    op.macs = op.O * op.OH * op.OW * op.CKK if mac is not None else 0
    op.out_layer = op.dst = group.out
    op.src = group.src
    op.stored_fmt = follow[-1].out_fmt if follow else op.out_fmt
    if group.cat is not None:  # its channels of the concat, aligned to the concat's format
        cat, i, offset = group.cat
        if cat.out_fmt.bits != cfg.data_bits:
            raise FxpgaError(
                f"{where}: layer '{cat.name}': the engine aligns concat inputs at data_bits="
                f"{cfg.data_bits}, this concat's output has {cat.out_fmt.bits} bits"
            )
        if len(cat.node.out_shape) == 1 and op.POH * op.POW > 1:
            raise FxpgaError(
                f"{where}: layer '{cat.name}': the engine concatenates maps along channels, "
                f"not flattened maps (it stores them channel-last)"
            )
        op.a_shift = _align_shift(cat.in_fmts[i], cat.out_fmt, cfg.data_bits)
        op.fused.append(cat.name)
        op.stored_fmt = cat.out_fmt
    if mac is not None and getattr(mac.node, "groups", 1) > 1:
        if not depthwise:
            raise FxpgaError(
                f"{where}: layer '{mac.name}': grouped convolution (groups={mac.node.groups}) "
                f"needs an engine built with EngineConfig.depthwise"
            )
        made = _split_groups(op, mac.node.groups, lanes, cfg.banks)
    else:
        made = [op]
    if group.cat is not None:
        for part in made:
            part.o0 += group.cat[2]
            part.OP = group.cat[0].node.out_shape[0]
    return made


def _split_groups(op: Op, groups: int, lanes: int, banks: int = 1) -> list[Op]:
    """A grouped conv as one op per ``lanes`` output channels: each reads the window of input
    channels its outputs need, with each output's weights at its own group's channels of the
    window and zeros elsewhere. MACs count the real products only. A depthwise conv's whole
    groups of ``lanes`` channels are one op (``g_c``: its window moves by ``lanes`` channels
    a group), the rest another. A depthwise op whose channel window starts at a multiple of
    ``banks`` in a map of a multiple of ``banks`` channels reads ``banks`` of them per tap
    (``dw = 3``)."""
    og, cg = op.O // groups, op.C // groups
    whole = op.O // lanes if cg == og == 1 else 0
    if whole > 1:
        spans = [(0, whole * lanes)] + ([(whole * lanes, op.O)] if op.O % lanes else [])
    else:
        spans = [(lo, min(op.O, lo + lanes)) for lo in range(0, op.O, lanes)]
    ops = []
    for lo, hi in spans:
        merged = hi - lo > lanes  # (depthwise: each group's window is its lanes' channels)
        c_lo, c_hi = (lo // og) * cg, ((hi - 1) // og + 1) * cg
        if merged:
            c_hi = c_lo + lanes
        w = np.zeros((hi - lo, c_hi - c_lo, op.KH, op.KW), dtype=np.int64)
        for o in range(lo, hi):
            c = (o - lo) % lanes if merged else (o // og) * cg - c_lo
            w[o - lo, c : c + cg] = op.weights[o]
        part = dataclasses.replace(
            op,
            name=f"{op.name}[{lo}:{hi}]",
            fused=list(op.fused),
            C=c_hi - c_lo,
            O=hi - lo,
            c0=c_lo,
            o0=lo,
            weights=w,
            bias=op.bias[lo:hi],
            extra_shift=None if op.extra_shift is None else op.extra_shift[lo:hi],
            g_c=lanes if merged else 0,
        )
        part.macs = (hi - lo) * op.OH * op.OW * cg * op.KH * op.KW
        part.dw = int(cg == 1 and og == 1)
        if part.dw and banks > 1 and op.CP % banks == 0 and c_lo % banks == 0:
            part.dw, part.banks = 3, banks
        ops.append(part)
    return ops


def _channel_split(op: Op, cfg: EngineConfig):
    """Make ``op`` channel-split (``dw = 2``) where its channels sit bank-aligned and that
    takes fewer cycles."""
    NB = cfg.banks
    if op.dw or op.C % NB or op.CP % NB or op.c0 % NB or op.in_addr % NB:
        return
    split = dataclasses.replace(op, dw=2, banks=NB)
    if run_cycles(split, cfg) < run_cycles(op, cfg):
        op.dw, op.banks = 2, NB


def _channel_shifts(mac: QLayer) -> tuple[int, np.ndarray | None]:
    """The op's shift and, for weights with a format per channel, each channel's offset from
    it. A right shift by ``acc_bits`` or more leaves 0 of any accumulator (``requantize``
    rounds ``v + 2^(s−1)``, in ``[0, 2^s)``, down): longer ones are that one."""
    s = np.minimum(mac.shifts, mac.acc_bits)
    if not mac.per_channel:
        return int(s), None
    low = int(s.min())
    return low, (s - low).astype(np.int64)


def _align_shift(src: QFormat, dst: QFormat, data_bits: int) -> int:
    """The rounding shift that aligns ``src`` to ``dst`` (``golden.align``), limited to
    ±(``data_bits`` + 1): a longer shift either way gives what that one does, to any value
    of ``data_bits`` + 1 bits (an unsigned word, or an add's operand for an unsigned sum)."""
    return max(-data_bits - 1, min(data_bits + 1, src.fl - dst.fl))


def _identity_op(name: str, shape, fmt: QFormat, where: str) -> Op:
    """A 1x1 identity convolution over a stored (C, H, W) map of format ``fmt``."""
    C, H, W = shape
    if C * C > MAX_WEIGHT_ENTRIES:  # its C×C weights, before they are made
        raise FxpgaError(
            f"{where}: layer '{name.split(':')[0]}' runs as a 1x1 identity convolution over "
            f"{C} channels, whose {C * C:,} weights are more than the {MAX_WEIGHT_ENTRIES:,} "
            f"the {LARGEST_BOARD} holds"
        )
    return Op(
        name, [], 0, C, H, W, 1, 1, 1, 1, 0, 0, H, W, C,
        shift=0, out_fmt=fmt, in_fmt=fmt, stored_fmt=fmt,
        weights=np.eye(C, dtype=np.int64).reshape(C, C, 1, 1),
        bias=np.zeros(C, dtype=np.int64),
        acc_bits=max(fmt.bits + 1, 2),
    )  # fmt: skip


def check_ops(qm: QModel):
    """A one-line error naming the first layer the engine cannot run yet."""
    for la in qm.layers:
        if la.node.op not in ENGINE_OPS:
            raise FxpgaError(
                f"{la.node.where()}: the engine does not run {la.node.op} layers yet "
                f"(it runs {', '.join(ENGINE_OPS)})"
            )


class _Parity:
    """Which tensors must share a buffer, and which must not: union-find with each member's
    parity relative to its root (0: the root's buffer, 1: the other)."""

    def __init__(self):
        self.parent: dict[str, tuple[str, int]] = {}

    def find(self, t: str) -> tuple[str, int]:
        p = 0
        while t in self.parent:
            t, q = self.parent[t]
            p ^= q
        return t, p

    def relate(self, a: str, b: str, differ: int) -> bool:
        """Put ``b`` in ``a``'s buffer (``differ`` 0) or the other; False if it cannot be."""
        (ra, pa), (rb, pb) = self.find(a), self.find(b)
        if ra == rb:
            return pa ^ pb == differ
        self.parent[rb] = (ra, pa ^ pb ^ differ)
        return True


def _allocate(
    ops: list[Op], sizes: dict[str, int], shapes, fmts, where: str, align: int = 1
) -> list[Op]:
    """Place every stored tensor in a buffer and a region of it, and set each op's buffers and
    addresses. Returns the ops, with a copy op before an add whose operands would have to
    share a buffer.

    Buffers: an op that adds reads its input through the taps and the other operand through
    its output buffer's read port, so that operand shares the output's buffer and the input
    does not (these are hard constraints, solved first); otherwise an op writes the buffer
    it does not read where it can (ping-pong), and the graph input is in buffer 0.
    Regions: first fit in each buffer among the tensors live at the same time (from the first
    op writing a tensor to the last reading it; the output never dies), at multiples of
    ``align`` (the banks, which a wide depthwise op's reads assume); an add writes over its
    other operand when nothing reads that afterwards."""
    par = _Parity()
    par.relate("#0", ir.INPUT, 0)
    out = []
    copies = {}  # (skip, dst) → the copy the ops of a split add share
    for op in ops:
        if op.add:
            if (op.skip, op.dst) in copies:
                op.skip = copies[op.skip, op.dst]
            trial = _Parity()
            trial.parent = dict(par.parent)
            if not (trial.relate(op.skip, op.dst, 0) and trial.relate(op.src, op.dst, 1)):
                # the operands would share a buffer: copy the skip operand to a new tensor
                copy = _identity_op(f"{op.skip}:copy", shapes[op.skip], fmts[op.skip], where)
                copy.src, copy.dst = op.skip, f"{op.skip}:copy"
                copy.out_layer = op.skip
                sizes[copy.dst] = sizes[op.skip]
                out.append(copy)
                copies[op.skip, op.dst] = op.skip = copy.dst
                trial.parent = dict(par.parent)
                assert trial.relate(op.skip, op.dst, 0) and trial.relate(op.src, op.dst, 1)
            par = trial
        out.append(op)
    # buffers: fix each group of related tensors where its first member is written (the
    # input's group so that the input is in buffer 0)
    root, parity = par.find("#0")
    color = {root: parity}

    def buf(t):
        r, p = par.find(t)
        return color[r] ^ p

    for op in out:
        r, p = par.find(op.dst)
        if r not in color:
            color[r] = (1 - buf(op.src)) ^ p
    # regions: live ranges [first write, last read] in op indices (the input from -1)
    first, last = {ir.INPUT: -1}, {ir.INPUT: -1}
    for k, op in enumerate(out):
        first.setdefault(op.dst, k)
        for t in (op.src, op.skip):
            if t is not None:
                last[t] = k
    last[out[-1].dst] = len(out)
    home = {}  # a tensor written in place over another → that one
    for op in out:
        if op.add and op.dst not in home and op.skip not in home.values():
            later = [o for o in out[first[op.dst] :] if op.skip in (o.src, o.skip)]
            if all(o.dst == op.dst and o.skip == op.skip and o.src != op.skip for o in later):
                home[op.dst] = op.skip

    def home_of(t):  # the tensor whose region t takes
        while t in home:
            t = home[t]
        return t

    blocks = {}  # root tensor → [buffer, size, first, last, base]
    for t in first:
        root = home_of(t)
        b = blocks.setdefault(root, [buf(root), sizes[root], first[root], last[root], None])
        b[3] = max(b[3], last.get(t, first[t]))
    placed = []
    for b in sorted(blocks.values(), key=lambda b: b[2]):
        bf, size, lo, hi, _ = b
        busy = sorted(
            (p[4], p[4] + p[1]) for p in placed if p[0] == bf and p[2] <= hi and lo <= p[3]
        )
        base = 0
        for s, e in busy:
            if base + size <= s:
                break
            base = max(base, -(-e // align) * align)
        b[4] = base
        placed.append(b)

    def addr(t):
        return blocks[home_of(t)][4]

    for op in out:
        op.in_buf, op.in_addr = buf(op.src), addr(op.src)
        op.out_buf, op.out_addr = buf(op.dst), addr(op.dst)
        if op.skip is not None:
            op.skip_addr = addr(op.skip)
            assert buf(op.skip) == op.out_buf != op.in_buf
    return out


def compile_model(qm: QModel, config: EngineConfig | None = None) -> Program:
    """Lay the model out for ``config``; a model that does not fit is a one-line error."""
    cfg = config or EngineConfig()
    check_ops(qm)  # what the engine cannot run yet, before anything is laid out
    lanes = cfg.lanes
    where = "compile"
    groups, alias = _fuse(qm)
    if not cfg.branches and any(g.skip is not None or g.cat is not None for g in groups):
        raise FxpgaError(
            "the model adds or concatenates tensors (its graph branches): it needs an engine "
            "built with EngineConfig.branches"
        )
    fmts = {ir.INPUT: qm.input_fmt} | {la.name: la.out_fmt for la in qm.layers}
    shape = qm.graph.input_shape
    stored = {ir.INPUT: tuple(shape) if len(shape) == 3 else (shape[0], 1, 1)}  # as held
    ops: list[Op] = []
    for group in groups:
        made = _make_ops(group, fmts[group.src], stored[group.src], where, cfg)
        op = made[0]
        c0, h0, w0 = stored[group.src]
        if op.H * op.W == 1 and h0 * w0 > 1:
            # a linear layer after a flatten reads the HWC-stored map in address order:
            # address (p·C0 + c0) holds torch feature c0·H0·W0 + p
            idx = np.arange(c0 * h0 * w0).reshape(c0, h0 * w0).T.reshape(-1)
            op.weights = op.weights[:, idx]
        ops += made
        stored[group.out] = (op.OP, op.POH, op.POW)
        if group.skip is not None and stored[group.skip] != stored[group.out]:
            # (a flattened map is stored channel-last, a vector in feature order)
            add = next(la.name for la in group.follow if isinstance(la.node, ir.Add))
            raise FxpgaError(
                f"{where}: layer '{add}': the engine adds tensors stored alike; one operand "
                f"is a flattened map, stored channel-last, the other is not"
            )
    out_name = alias.get(qm.layers[-1].name, qm.layers[-1].name)
    if out_name not in stored:  # the output is the input, flattened: nothing to run
        raise FxpgaError(f"{where}: the model computes nothing the engine runs")
    fmt = fmts[out_name]
    sizes = {t: math.prod(s) for t, s in stored.items()}
    ops = _allocate(ops, sizes, stored, fmts, where, cfg.banks)
    last_writer = {op.dst: k for k, op in enumerate(ops)}
    for k, op in enumerate(ops):
        op.completes_layer = last_writer[op.dst] == k
    # widths
    need_data = max([qm.input_fmt.bits] + [op.out_fmt.bits for op in ops])
    need_w = max(signed_width(int(op.weights.min()), int(op.weights.max())) for op in ops)
    need_acc = max(op.acc_bits for op in ops)
    problems = []
    if need_data > cfg.data_bits:
        problems.append(
            f"activations need {need_data} bits, the engine has data_bits={cfg.data_bits}"
        )
    if need_w > cfg.weight_bits:
        problems.append(f"weights need {need_w} bits, the engine has weight_bits={cfg.weight_bits}")
    for op in ops:
        if op.signs and not cfg.unsigned:
            problems.append(
                f"layer '{op.name}' has unsigned tensors, and the engine stores signed ones "
                f"only (EngineConfig.unsigned=False)"
            )
        if op.extra_shift is not None and not cfg.channel_shifts:
            problems.append(
                f"layer '{op.name}' has a weight format per output channel, and the engine "
                f"has one shift per op (EngineConfig.channel_shifts=False)"
            )
        if op.extra_shift is not None and op.extra_shift.max() > MAX_CHANNEL_SHIFT:
            problems.append(
                f"layer '{op.name}''s channels' shifts span {int(op.extra_shift.max())}, "
                f"the engine's per-channel offsets at most {MAX_CHANNEL_SHIFT}"
            )
        if op.shift < -MAX_LEFT_SHIFT:
            problems.append(
                f"layer '{op.name}' scales up by 2^{-op.shift} when requantizing; "
                f"the engine allows at most 2^{MAX_LEFT_SHIFT} (lower its "
                f"output fl)"
            )
    if need_acc > cfg.acc_bits:
        worst = max(ops, key=lambda o: o.acc_bits)
        problems.append(
            f"layer '{worst.name}' needs a {need_acc}-bit accumulator, the engine "
            f"has acc_bits={cfg.acc_bits}"
        )
    if cfg.channel_split:
        for op in ops:
            _channel_split(op, cfg)
    # memories
    w_off = b_off = 0
    for op in ops:
        op.w_base, op.b_base = w_off, b_off
        w_off += op.groups(lanes) * op.lane_weights
        b_off += op.groups(lanes) * lanes
    fmap_need = max(
        [op.in_addr + op.in_size for op in ops] + [op.out_addr + op.out_size for op in ops]
    )
    fmap_have = cfg.fmap_depth
    if cfg.fmap_store == "spram":  # one SPRAM per buffer, `banks` values per word
        fmap_have = min(fmap_have or MAX_MEMORY_DEPTH, SPRAM_DEPTH * cfg.banks)
    # (what, entries needed, the engine's, the most an engine has: checked before allocating)
    for what, need, have, most in (
        ("feature-map buffer", fmap_need, fmap_have, MAX_MEMORY_DEPTH),
        (
            "weight bank (per lane)",
            w_off,
            SPRAM_DEPTH if cfg.weight_store == "spram" else cfg.wmem_depth,
            MAX_MEMORY_DEPTH,
        ),
        ("bias memory", b_off, cfg.bmem_depth, MAX_MEMORY_DEPTH),
        ("program", len(ops), cfg.max_ops, MAX_OPS),
    ):
        if have is not None and need > have:
            problems.append(f"{what} needs {need} entries, the engine has {have}")
        elif need > most:
            problems.append(f"{what} needs {need:,} entries, an engine has at most {most:,}")
    if lanes * w_off > MAX_WEIGHT_ENTRIES:
        problems.append(
            f"the weight banks need {lanes} x {w_off:,} = {lanes * w_off:,} entries, more than "
            f"the {LARGEST_BOARD} holds ({MAX_WEIGHT_ENTRIES:,} 2-bit words)"
        )
    if problems:
        raise FxpgaError(f"model does not fit the engine (lanes={lanes}): " + "; ".join(problems))
    wmem = [[0] * w_off for _ in range(lanes)]
    bmem = [0] * b_off
    bshift = [0] * b_off
    for op in ops:
        if op.dw == 2:
            _split_weights(op, lanes, wmem, bmem, bshift)
            continue
        for o in range(op.O):
            g, lane = divmod(o, lanes)
            base = op.w_base + g * op.lane_weights
            if op.dw:  # its own channel's kernel, (ky, kx) order
                taps = op.weights[o, o % op.C].reshape(-1)
            else:
                taps = op.weights[o].transpose(1, 2, 0).reshape(-1)  # (ky, kx, c) order
            wmem[lane][base : base + op.lane_weights] = [int(v) for v in taps]
            bmem[op.b_base + g * lanes + lane] = int(op.bias[o])
            if op.extra_shift is not None:
                bshift[op.b_base + g * lanes + lane] = int(op.extra_shift[o])
    last = ops[-1]
    prog = Program(
        cfg,
        ops,
        sizes[ir.INPUT],
        last.out_size,
        last.out_buf,
        cfg.fmap_depth or fmap_need,
        wmem,
        bmem,
        qm.input_fmt,
        fmt,
        in_shape=stored[ir.INPUT],
        out_shape=stored[out_name],
        out_base=last.out_addr,
        bshift=bshift,
    )
    prog.estimate = program_cycles(ops, cfg)
    return prog


def _split_weights(op: Op, lanes: int, wmem, bmem, bshift):
    """A channel-split op's memory images: group g's output channel g·(lanes / banks) + o
    is lanes o·banks + j (j < banks), lane o·banks + j keeping its weights at channels
    pass·banks + j in (ky, kx, pass) order; its bias (and shift offset) at b_base + g·lanes
    + o."""
    NB, per = op.banks, op.group_channels(lanes)
    for oc in range(op.O):
        g, o = divmod(oc, per)
        base = op.w_base + g * op.lane_weights
        w = op.weights[oc].reshape(op.passes, NB, op.KH, op.KW)  # (pass, j, ky, kx)
        for j in range(NB):
            taps = w[:, j].transpose(1, 2, 0).reshape(-1)
            wmem[o * NB + j][base : base + op.lane_weights] = [int(v) for v in taps]
        bmem[op.b_base + g * lanes + o] = int(op.bias[oc])
        if op.extra_shift is not None:
            bshift[op.b_base + g * lanes + o] = int(op.extra_shift[oc])


def _groups_apart(ops: list[Op], lanes: int):
    """The ops, a depthwise op over several groups (``g_c``) as one op per group."""
    for op in ops:
        if not op.g_c:
            yield op
            continue
        for g in range(op.groups(lanes)):
            yield dataclasses.replace(
                op,
                O=min(lanes, op.O - g * lanes),
                c0=op.c0 + g * op.g_c,
                o0=op.o0 + g * lanes,
                w_base=op.w_base + g * op.lane_weights,
                b_base=op.b_base + g * lanes,
                g_c=0,
            )


def run_program(prog: Program, x_int: np.ndarray) -> np.ndarray:
    """Execute the op list on one integer sample (C-order in, C-order out) as the engine does.

    A functional model of the engine (not of its timing): HWC buffers, weights and biases read
    back from the memory images, the fused post-processing per op. It checks the compiler's
    layout and fusion against the golden model without simulating hardware.
    """
    from ..quant.golden import conv_acc
    from ..quant.qformat import avg_round, requantize, requantize_channels, saturate

    lanes, D = prog.config.lanes, prog.config.data_bits
    # the bias memory's words as the post-processor splits them: (bias, shift offset)
    bias_words = [prog.split_bias_word(w) for w in prog.bias_words]
    buf = [np.zeros(prog.fmap_depth, dtype=np.int64) for _ in range(2)]
    x = prog.to_engine(np.asarray(x_int, dtype=np.int64).reshape(1, -1))[0]
    buf[0][: x.size] = x
    for op in _groups_apart(prog.ops, lanes):
        hwc = buf[op.in_buf][op.in_addr : op.in_addr + op.in_size].reshape(op.H, op.W, op.CP)
        hwc = from_words(hwc, D, op.in_fmt.signed)
        xin = hwc[:, :, op.c0 : op.c0 + op.C].transpose(2, 0, 1)
        w = np.zeros((op.O, op.C, op.KH, op.KW), dtype=np.int64)
        b = np.zeros(op.O, dtype=np.int64)
        shifts = np.full(op.O, op.shift, dtype=np.int64)
        per, NB = op.group_channels(lanes), op.banks
        for o in range(op.O):
            g, lane = divmod(o, per)
            base = op.w_base + g * op.lane_weights
            b[o], e = bias_words[op.b_base + g * lanes + lane]
            shifts[o] += e
            if op.dw == 2:  # its channels ≡ j (mod banks) in lane lane·banks + j
                for j in range(NB):
                    taps = np.array(prog.wmem[lane * NB + j][base : base + op.lane_weights])
                    w[o, j::NB] = taps.reshape(op.KH, op.KW, op.passes).transpose(2, 0, 1)
                continue
            taps = np.array(prog.wmem[lane][base : base + op.lane_weights])
            if op.dw:
                w[o, o] = taps.reshape(op.KH, op.KW)
            else:
                w[o] = taps.reshape(op.KH, op.KW, op.C).transpose(2, 0, 1)
        # zeros: PH / PW before (top, left), as many after as the output size reads
        below = max(0, (op.OH - 1) * op.SH + op.KH - op.H - op.PH)
        right = max(0, (op.OW - 1) * op.SW + op.KW - op.W - op.PW)
        xin = np.pad(xin, ((0, 0), (op.PH, below), (op.PW, right)))
        acc = conv_acc(xin[None], w, b, (op.SH, op.SW), (0, 0))[:, :, : op.OH, : op.OW]
        y = requantize_channels(acc, shifts, op.out_fmt.bits, op.out_fmt.signed)
        y = np.clip(y, *op.bounds)
        if op.relu_pre:
            y = np.maximum(y, 0)
        pad = ((0, 0), (0, 0), (op.PPH, op.PPH), (op.PPW, op.PPW))
        y = np.pad(y, pad, constant_values=0 if op.pool_avg else op.bounds[0])
        win = np.lib.stride_tricks.sliding_window_view(y, (op.PKH, op.PKW), axis=(2, 3))
        win = win[:, :, :: op.PSH, :: op.PSW]
        if op.pool_avg:
            y = avg_round(win.sum(axis=(4, 5)), op.PKH * op.PKW)
        else:
            y = win.max(axis=(4, 5))
        if op.relu_post:
            y = np.maximum(y, 0)
        y = y[0].transpose(1, 2, 0)  # CHW → HWC
        if op.add:  # the other operand, from the region at skip_addr of the buffer written
            other = buf[op.out_buf][op.skip_addr : op.skip_addr + op.out_size]
            other = other.reshape(op.POH, op.POW, op.OP)[:, :, op.o0 : op.o0 + op.O]
            other = from_words(other, D, op.skip_fmt.signed)
            # aligned to the output's format, or for an unsigned one a bit wider
            # (golden.add_operand_fmt), summed and saturated
            ab, sg = D + int(not op.stored_fmt.signed), op.stored_fmt.signed
            y = requantize(y, op.a_shift, ab) + requantize(other, op.b_shift, ab)
            y = saturate(y, D, sg)
            if op.add_relu:
                y = np.maximum(y, 0)
        else:  # aligned to a concat's format (which may be unsigned where its inputs are not)
            y = requantize(y, op.a_shift, D, op.stored_fmt.signed)
        out = buf[op.out_buf][op.out_addr : op.out_addr + op.out_size]
        out.reshape(op.POH, op.POW, op.OP)[:, :, op.o0 : op.o0 + op.O] = to_words(y, D)
    start = prog.out_base
    return prog.from_engine(buf[prog.out_buf][None, start : start + prog.out_size])[0]
