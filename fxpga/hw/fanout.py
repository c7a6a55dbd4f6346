"""Register copies for wide broadcasts (one net to every lane is the ECP5's long pole)."""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Instance, Signal, Value


def fd1s3ax(m, d, name: str, clk=None) -> Signal:
    """An ECP5 ``FD1S3AX`` flip-flop of the 1-bit ``d`` (clock ``clk``, else ``sync``'s) with
    GSR disabled, clearing to 0 at configuration; its output. Yosys leaves such instances
    alone: it neither merges them nor resets them through GSR."""
    q = Signal(name=name)
    m.submodules[name] = Instance(
        "FD1S3AX", p_GSR="DISABLED", i_CK=ClockSignal() if clk is None else clk, i_D=d, o_Q=q
    )
    return q


def register_copies(m, value, copies: int, platform=None, name: str = "copy") -> list[Signal]:
    """``copies`` registers of ``value`` (one cycle later, no reset), each meant to drive a
    share of a wide broadcast (``share``). The caller gives them data whose reset value
    reaches them in a cycle (they are pipeline registers, never state).

    Yosys merges flip-flops that have the same input (``opt_merge``, ``keep`` on the wire
    does not stop it), so on ECP5 each bit is an ``FD1S3AX`` instance, which it leaves alone;
    elsewhere (iCE40, simulation), or for one copy, the copies are one register.
    """
    value = Value.cast(value)
    if copies == 1 or getattr(platform, "family", None) != "ecp5":
        reg = Signal(value.shape(), name=name, reset_less=True)
        m.d.sync += reg.eq(value)
        return [reg] * copies
    out = []
    for k in range(copies):
        reg = Signal(value.shape(), name=f"{name}{k}")
        m.d.comb += reg.eq(Cat(fd1s3ax(m, value[b], f"{name}{k}_{b}") for b in range(len(value))))
        out.append(reg)
    return out


def share(copies: list, consumers: int) -> list:
    """The copy each of ``consumers`` takes: contiguous shares, as even as they divide."""
    return [copies[i * len(copies) // consumers] for i in range(consumers)]
