"""Banked feature-map buffer: narrow reads anywhere, wide writes of consecutive addresses."""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out


class FeatureBuffer(wiring.Component):
    """``depth`` signed ``data_bits`` words in ``banks`` banks (bank = address mod ``banks``).

    - read: ``rd_data`` holds the word at ``rd_addr`` one cycle later (**latency 1**);
    - write: ``wr_data[i]`` goes to ``wr_addr + i`` where ``wr_en[i]``, for ``i < banks``, all
      in one cycle: consecutive addresses always fall in distinct banks, so the post-processor
      writes ``banks`` channels of one pixel (HWC layout) per cycle.

    ``banks`` must be a power of two; with 1 bank this is a plain simple-dual-port memory.
    With ``write_reg`` each bank's write (after the rotation below) waits in a register for
    one cycle: a write presented in cycle t is in the memory for reads issued from t + 2 on
    (t + 1 without), and the rotation's muxes are off the memories' write-decode path.
    """

    def __init__(
        self,
        depth: int,
        data_bits: int,
        banks: int = 1,
        addr_bits: int = 24,
        write_reg: bool = False,
    ):
        assert banks & (banks - 1) == 0
        self.depth, self.data_bits, self.banks = depth, data_bits, banks
        self.write_reg = write_reg
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
        # writes: element i goes to bank (wr_addr + i) mod n, so bank b takes element
        # (b − s) mod n (s = wr_addr mod n: a rotation, log2(n) levels of 2:1 muxes) at row
        # wr_addr / n, or the row after it when b < s (one adder for all banks)
        s_ = self.wr_addr[:B] if n > 1 else 0
        row0 = Signal(range(rows + 1), name="wr_row0")
        row1 = Signal(range(rows + 1), name="wr_row1")
        m.d.comb += [row0.eq(self.wr_addr >> B), row1.eq(row0 + 1)]
        vec = [Cat(self.wr_data[i], self.wr_en[i]) for i in range(n)]
        for k in range(B):
            step = 1 << k
            vec = [Mux(s_[k], vec[(b - step) % n], vec[b]) for b in range(n)]
        for b in range(n):
            mem = memory.Memory(shape=signed(self.data_bits), depth=rows, init=[])
            m.submodules[f"bank{b}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += rd.addr.eq(self.rd_addr >> B)
            datas.append(rd.data)
            v = Signal(self.data_bits + 1, name=f"wr_vec{b}")
            row = Signal(range(rows + 1), name=f"wr_row{b}")
            domain = m.d.sync if self.write_reg else m.d.comb
            domain += [v.eq(vec[b]), row.eq(Mux(b < s_, row1, row0) if n > 1 else row0)]
            m.d.comb += [wr.addr.eq(row), wr.data.eq(v[:-1]), wr.en.eq(v[-1])]
        m.d.comb += self.rd_data.eq(Array(datas)[sel] if n > 1 else datas[0])
        return m
