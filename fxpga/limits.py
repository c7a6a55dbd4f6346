"""Bounds on every size a user can set, each taken from the hardware fxpga targets or from
the engine's own address fields.

Each bound is checked where the size enters (``EngineConfig``, the dataset and model loaders,
the quantizer, the simulators, the board build, the command line) before anything of that
size is allocated; going past one is a one-line ``FxpgaError`` (or argparse error) naming the
knob, the bound and the value. docs/engine.md lists them ("Limits").
"""

from __future__ import annotations

import numbers

from .errors import FxpgaError

# ---- the largest board (DESIGN.md, device facts)
LARGEST_BOARD = "ECP5-85F"
BOARD_BRAM_BITS = 208 * 18 * 1024  # the ECP5-85F's 208 DP16KD of 18 kbit: 3,833,856 bits
BOARD_MULTIPLIERS = 156  # the ECP5-85F's MULT18X18D

# ---- the engine (fxpga/hw)
MAX_LANES = 256  # Engine.cfg's lane field is 8 bits (addr[20:28]); the ECP5-85F has 156 DSPs
MAX_MEMORY_DEPTH = 1 << 20  # Engine.cfg's index field is 20 bits (addr[0:20])
MAX_OPS = 256  # the sequencer counts ops in 8 bits (engine.py: op, ops_left)
MIN_OPERAND_BITS, MAX_OPERAND_BITS = 2, 18  # one MULT18X18D per lane: 18-bit operands
# an 18×18-bit product (36 bits) with 12 bits of headroom: sums of 4096 full-scale products
MIN_ACC_BITS, MAX_ACC_BITS = 8, 48
MAX_AVG_POOL = 256  # the post-processor's pool register is data_bits + 8 bits (postproc.py)
# weight-bank entries over all lanes: the ECP5-85F's block RAM as 2-bit words (the narrowest)
MAX_WEIGHT_ENTRIES = BOARD_BRAM_BITS // 2

# ---- data and models (fxpga/quant)
MAX_SAMPLES = 100_000  # images in a dataset or a run: ten times MNIST's 10,000 test images
# values in one sample or one layer's output: two 8-bit feature maps of this size fill the
# ECP5-85F's block RAM (MLPerf Tiny's largest input, 3×96×96, is 27,648)
MAX_TENSOR_ELEMENTS = BOARD_BRAM_BITS // 16
MAX_DATASET_ELEMENTS = 1 << 28  # per .npz array: 1 GiB of float32 (CIFAR-10's 60,000 is 184M)
MAX_WEIGHTS = BOARD_BRAM_BITS // 2  # a model's weights: the ECP5-85F's block RAM as 2-bit words
MAX_CALIB_VALUES = 1 << 28  # float64 activations the quantizer keeps for calibration: 2 GiB

# ---- simulation, boards, the host link
MAX_STALL = 0.9  # stream stall probability: each image then takes ~10× its cycles (1 never ends)
MAX_WAVE_SAMPLES = 100  # images with --waves: one simulator run (sim/simulate.py CHUNK)
MAX_SIM_CACHE_ENTRIES = 10_000  # simulator models kept: ~10 GB of ~1 MB Verilator models
MAX_SEED = 2**31 - 1  # nextpnr reads --seed as a C int; the simulators' seeds share the range
# engine clock: a 1 Mbaud UART needs 4 clocks a bit; the ECP5 PLL's CLKOP tops out at 400 MHz
MIN_FREQ_MHZ, MAX_FREQ_MHZ = 4.0, 400.0
MIN_BAUD, MAX_BAUD = 300, 12_000_000  # the slowest standard rate; the FT2232H's fastest
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.01, 600.0  # a reply wait: 10 ms (a frame) to 10 minutes


def check_range(what: str, v, lo, hi, why: str = ""):
    """Return ``v`` if it is a number in ``lo..hi`` (an integer if ``lo`` is), else raise a
    one-line ``FxpgaError`` naming ``what``, the bound, the value and ``why``."""
    integral = isinstance(lo, int)
    kind = numbers.Integral if integral else numbers.Real
    why = f" ({why})" if why else ""
    span = f"{lo}..{hi}" if integral else f"{lo:g}..{hi:g}"
    if isinstance(v, bool) or not isinstance(v, kind):
        a = "an integer" if integral else "a number"
        raise FxpgaError(f"{what} must be {a} in {span}, not {v!r}{why}")
    if not lo <= v <= hi:
        raise FxpgaError(f"{what} must be in {span}, not {v!r}{why}")
    return v
