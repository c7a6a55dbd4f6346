"""8N1 UART receiver and transmitter with a fixed clock divisor."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class UARTRx(wiring.Component):
    """Receives 8N1 bytes on ``rx`` (``divisor`` clocks per bit).

    ``data`` carries each byte for one cycle (``valid`` does not wait for ``ready``: a byte
    not taken is lost). A byte whose stop bit is 0 (framing error, a break) is dropped.
    **Latency**: the byte is out ``divisor / 2`` cycles into its stop bit.
    """

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor must be at least 4, not {divisor}")
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        sync = Signal(2, init=0b11)
        m.d.sync += sync.eq(Cat(self.rx, sync[0]))
        rx = sync[1]
        timer = Signal(range(self.divisor))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += [timer.eq(self.divisor // 2), bit.eq(0)]
                    m.next = "BITS"
            with m.State("BITS"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 0):  # middle of the start bit
                        with m.If(rx):
                            m.next = "IDLE"  # a glitch, not a start bit
                    with m.Elif(bit <= 8):
                        m.d.sync += shreg.eq(Cat(shreg[1:], rx))
                    with m.Else():  # stop bit
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(rx)]
                        m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """Sends the bytes of ``data`` as 8N1 on ``tx`` (``divisor`` clocks per bit).

    **Throughput**: one byte per ``10 · divisor`` cycles; ``ready`` is high while idle.
    """

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({"tx": Out(1, init=1), "data": In(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.data.valid):
                m.d.sync += [
                    shreg.eq(Cat(0, self.data.payload, 1)),
                    bits.eq(10),
                    timer.eq(self.divisor - 1),
                ]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [
                    shreg.eq(Cat(shreg[1:], 1)),
                    bits.eq(bits - 1),
                    timer.eq(self.divisor - 1),
                ]
        return m
