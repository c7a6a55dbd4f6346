"""The board top: UART ↔ host protocol ↔ Engine, independent of the board's pins."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..hw.compiler import Program
from ..hw.engine import Engine
from .hostif import HostInterface
from .protocol import ident_for
from .uart import UARTRx, UARTTx


class BoardTop(wiring.Component):
    """Everything but the clock and the pins: ``rx``/``tx`` are the UART lines.

    ``divisor`` = clock frequency / baud rate. ``engine_kw`` (memory depths) builds an engine
    whose memories are loaded at run time over ``CFG_WRITE`` instead of baked in.
    """

    def __init__(
        self, prog: Program, divisor: int, *, byte_timeout: int | None = None, bake: bool = True
    ):
        self.prog, self.divisor, self.bake = prog, divisor, bake
        self.byte_timeout = byte_timeout or 200 * divisor  # ~20 byte times
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        p = self.prog
        m.submodules.urx = urx = UARTRx(self.divisor)
        m.submodules.utx = utx = UARTTx(self.divisor)
        if self.bake:
            engine = Engine(p.config, p)
        else:
            engine = Engine(
                p.config,
                None,
                fmap_depth=p.fmap_depth,
                wmem_depth=p.wmem_depth,
                bmem_depth=p.bmem_depth,
                max_ops=len(p.ops),
            )
        m.submodules.engine = engine
        m.submodules.host = host = HostInterface(
            data_bits=p.config.data_bits,
            in_size=p.in_size,
            out_size=p.out_size,
            ident=ident_for(p).pack(),
            byte_timeout=self.byte_timeout,
        )
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, urx.data, host.rx)
        wiring.connect(m, host.tx, utx.data)
        wiring.connect(m, host.i, engine.i)
        wiring.connect(m, engine.o, host.o)
        wiring.connect(m, host.cfg, engine.cfg)
        m.d.comb += host.cycles.eq(engine.cycles)
        return m
