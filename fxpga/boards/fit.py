"""Will a compiled program's engine fit a board? Block RAMs, multipliers and SPRAM, counted
from the engine's memories before synthesis.

The count follows what yosys's memory mapping does with the engine's memories (checked on
the builds in docs/RESULTS.md: it predicts them exactly on ECP5 and within one block RAM on
the UP5K): a memory takes ``min over the block's aspect ratios of ⌈depth/d⌉·⌈width/w⌉``
blocks; on ECP5 memories of at most 64 words go to LUT RAM instead, on iCE40 memories of at
most 16 words to flip-flops. Logic (LUTs) is not predicted: nextpnr reports it.
"""

from __future__ import annotations

from ..errors import FxpgaError
from ..hw.compiler import SPRAM_COUNT, SPRAM_DEPTH, Program, avg_divide_shift, desc_fields
from ..hw.desc import HEADER_WORDS
from .protocol import value_bytes

ASPECTS = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),  # SB_RAM40_4K
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),  # DP16KD
}
SMALL = {"ice40": 16, "ecp5": 64}  # words: not worth a block RAM
BRAM_CELL = {"ice40": "ICESTORM_RAM", "ecp5": "DP16KD"}
DSP_CELL = {"ice40": "ICESTORM_DSP", "ecp5": "MULT18X18D"}
DSP_WIDTH = {"ice40": 16, "ecp5": 18}


def blocks(family: str, depth: int, width: int) -> int:
    if depth <= SMALL[family]:
        return 0
    return min(-(-depth // d) * -(-width // w) for d, w in ASPECTS[family])


def memories(prog: Program) -> list[tuple[str, int, int, int]]:
    """(name, count, depth, width) of the engine's and the host interface's memories in block
    RAM (not the biases with ``EngineConfig.bias_lutram``, which are LUT RAM)."""
    cfg = prog.config
    W, NB = cfg.post_lanes, cfg.banks
    vbytes = value_bytes(cfg.data_bits)
    out = [
        ("biases", W, -(-prog.bmem_depth // W), prog.bias_word_bits),
        ("program", 1, HEADER_WORDS + len(desc_fields(cfg)) * len(prog.ops), 32),
        ("host input buffer", 1, prog.in_size * vbytes, 8),
        ("host output buffer", 1, prog.out_size * vbytes, 8),
    ]
    if cfg.bias_lutram:
        out.pop(0)
    if cfg.weight_store == "bram":
        k = cfg.weight_pack
        out.insert(0, ("weights", -(-cfg.lanes // k), prog.wmem_depth, k * cfg.weight_bits))
    if cfg.fmap_store == "bram":
        out.insert(0, ("feature maps", 2 * NB, -(-prog.fmap_depth // NB), cfg.data_bits))
    return out


def estimate(prog: Program, family: str) -> dict[str, tuple[int, str]]:
    """Cell type → (count, what uses it) for block RAM, multipliers and SPRAM."""
    cfg = prog.config
    parts = [(name, n * blocks(family, d, w)) for name, n, d, w in memories(prog)]
    used = [f"{name} {k}" for name, k in parts if k]
    est = {BRAM_CELL[family]: (sum(k for _, k in parts), ", ".join(used))}
    dw = DSP_WIDTH[family]
    per_lane = -(-cfg.data_bits // dw) * -(-cfg.weight_bits // dw)
    n, why = cfg.lanes * per_lane, f"{cfg.lanes} lanes × {per_lane}"
    if cfg.avg_divide:
        per_post = divider_multipliers(cfg.data_bits, family)
        n += cfg.post_lanes * per_post
        why += f", the average divider {cfg.post_lanes} × {per_post}"
    est[DSP_CELL[family]] = (n, why)
    spram = []
    if cfg.weight_store == "spram":
        spram.append((-(-cfg.lanes // 2), f"weights of {cfg.lanes} lanes, 2 per SPRAM"))
    if cfg.fmap_store == "spram":
        spram.append((2, "feature maps 2"))
    if spram:
        est["ICESTORM_SPRAM"] = (sum(k for k, _ in spram), ", ".join(w for _, w in spram))
    return est


def divider_multipliers(data_bits: int, family: str) -> int:
    """Multipliers of the average divider (``EngineConfig.avg_divide``) per post-processing
    lane: ``n < 2^(data_bits + 10)`` times ``avg_mul`` (``avg_divide_shift`` bits), as yosys
    tiles it (tests/test_synth.py)."""
    dw = DSP_WIDTH[family]
    return -(-(data_bits + 10) // dw) * -(-avg_divide_shift(data_bits) // dw)


def check_fit(prog: Program, board: str, family: str, available: dict[str, int]) -> dict:
    """Raise ``FxpgaError`` naming the first resource the program's engine would overflow."""
    cfg = prog.config
    if cfg.weight_store == "spram":  # (EngineConfig checks the lanes and widths)
        wmem = prog.wmem_depth
        if wmem > SPRAM_DEPTH:
            raise FxpgaError(
                f"does not fit {board}: {wmem:,} weights per lane at {cfg.lanes} lanes, its "
                f"SPRAM holds {SPRAM_DEPTH:,} per lane"
                + (" (try more lanes)" if cfg.lanes < 2 * SPRAM_COUNT else "")
            )
    est = estimate(prog, family)
    for cell, (need, why) in est.items():
        have = available.get(cell, 0)
        if need > have:
            raise FxpgaError(
                f"does not fit {board}: needs {need} {cell} ({why}) of {have}; "
                f"try fewer lanes (--lanes) or a smaller model"
            )
    return est
