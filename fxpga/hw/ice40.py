"""iCE40UP5K primitives instantiated directly (a model for simulation:
``fxpga/boards/sim_models/sb_spram256ka.v``)."""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Signal


def sb_spram256ka(m, name: str, *, address, data_in, mask, write) -> Signal:
    """One SB_SPRAM256KA (16K × 16 bits, single-ported), always selected and awake: it
    writes ``data_in`` at ``address`` where the nibble ``mask`` says while ``write``, else
    reads ``address``; its 16-bit output (one cycle later, held while it writes)."""
    dout = Signal(16, name=f"{name}_dout")
    m.submodules[name] = Instance(
        "SB_SPRAM256KA",
        i_ADDRESS=address,
        i_DATAIN=data_in,
        i_MASKWREN=mask,
        i_WREN=write,
        i_CHIPSELECT=1,
        i_CLOCK=ClockSignal(),
        i_STANDBY=0,
        i_SLEEP=0,
        i_POWEROFF=1,
        o_DATAOUT=dout,
    )
    return dout
