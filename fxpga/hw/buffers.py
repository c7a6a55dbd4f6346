"""Banked feature-map buffer: narrow reads anywhere, wide writes of consecutive addresses."""

from __future__ import annotations

from amaranth import Array, Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out


class FeatureBuffer(wiring.Component):
    """``depth`` signed ``data_bits`` words in ``banks`` banks (bank = address mod ``banks``).

    - read: ``rd_data`` holds the word at ``rd_addr`` one cycle later (**latency 1**);
    - write: ``wr_data[i]`` goes to ``wr_addr + i`` where ``wr_en[i]``, for ``i < banks``, all
      in one cycle: consecutive addresses always fall in distinct banks, so the post-processor
      writes ``banks`` channels of one pixel (HWC layout) per cycle.

    ``banks`` must be a power of two; with 1 bank this is a plain simple-dual-port memory.
    """

    def __init__(self, depth: int, data_bits: int, banks: int = 1, addr_bits: int = 24):
        assert banks & (banks - 1) == 0
        self.depth, self.data_bits, self.banks = depth, data_bits, banks
        super().__init__(
            {
                "rd_addr": In(addr_bits),
                "rd_data": Out(signed(data_bits)),
                "wr_addr": In(addr_bits),
                "wr_data": In(signed(data_bits)).array(banks),
                "wr_en": In(1).array(banks),
            }
        )

    def elaborate(self, platform):
        m = Module()
        n, B = self.banks, self.banks.bit_length() - 1
        rows = -(-self.depth // n)
        datas, sel = [], Signal(range(n))
        m.d.sync += sel.eq(self.rd_addr if n == 1 else self.rd_addr[:B])
        for b in range(n):
            mem = memory.Memory(shape=signed(self.data_bits), depth=rows, init=[])
            m.submodules[f"bank{b}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += rd.addr.eq(self.rd_addr >> B)
            datas.append(rd.data)
            if n == 1:
                m.d.comb += [
                    wr.addr.eq(self.wr_addr),
                    wr.data.eq(self.wr_data[0]),
                    wr.en.eq(self.wr_en[0]),
                ]
                continue
            i_b = Signal(B, name=f"i{b}")  # which element of the vector lands in bank b
            m.d.comb += i_b.eq(b - self.wr_addr[:B])
            m.d.comb += [
                wr.addr.eq((self.wr_addr + i_b) >> B),
                wr.data.eq(Array(self.wr_data)[i_b]),
                wr.en.eq(Array(self.wr_en)[i_b]),
            ]
        m.d.comb += self.rd_data.eq(Array(datas)[sel] if n > 1 else datas[0])
        return m
