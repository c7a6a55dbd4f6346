"""Register copies for wide broadcasts (one net to every lane is the ECP5's long pole)."""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Signal, Value


def register_copies(m, value, copies: int, platform=None, name: str = "copy") -> list[Signal]:
    """``copies`` registers of ``value`` (one cycle later, no reset), each meant to drive a
    share of a wide broadcast. The caller gives them data whose reset value reaches them in
    a cycle (they are pipeline registers, never state).

    Yosys merges flip-flops that have the same input (``opt_merge``, ``keep`` on the wire
    does not stop it), so on ECP5 each bit is an ``FD1S3AX`` instance, which it leaves alone;
    elsewhere (iCE40, simulation) the copies are one register.
    """
    value = Value.cast(value)
    if getattr(platform, "family", None) != "ecp5":
        reg = Signal(value.shape(), name=name, reset_less=True)
        m.d.sync += reg.eq(value)
        return [reg] * copies
    out = []
    for k in range(copies):
        reg = Signal(value.shape(), name=f"{name}{k}")
        for b in range(len(value)):
            m.submodules[f"{name}{k}_{b}"] = Instance(
                "FD1S3AX", p_GSR="DISABLED", i_CK=ClockSignal(), i_D=value[b], o_Q=reg[b]
            )
        out.append(reg)
    return out
