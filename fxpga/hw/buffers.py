"""Banked feature-map buffer: narrow reads anywhere, wide writes of consecutive addresses."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .compiler import SPRAM_DEPTH, SPRAM_WIDTH
from .ice40 import sb_spram256ka


class FeatureBuffer(wiring.Component):
    """``depth`` signed ``data_bits`` words in ``banks`` banks (bank = address mod ``banks``).

    - read: ``rd_data`` holds the word at ``rd_addr`` one cycle later (**latency 1**);
      ``rd_banks[b]`` holds bank ``b``'s word of the same row (``rd_addr`` rounded down to a
      multiple of ``banks``, plus ``b``): the ``banks`` words of an aligned address;
    - write: ``wr_data[i]`` goes to ``wr_addr + i`` where ``wr_en[i]``, for ``i < banks``, all
      in one cycle: consecutive addresses always fall in distinct banks, so the post-processor
      writes ``banks`` channels of one pixel (HWC layout) per cycle.

    ``banks`` must be a power of two; with 1 bank this is a plain simple-dual-port memory.
    With ``write_reg`` = 1 each bank's write (after the rotation below) waits in a register
    for one cycle: a write presented in cycle t is in the memory for reads issued from t + 2
    on (t + 1 without), and the rotation's muxes are off the memories' write-decode path.
    With ``write_reg`` = 2 the write is registered before that too, in a copy of its own for
    each bank (address, data, enables): reads see it from t + 3, and each bank's rotation
    and row adder work from registers the placer can put beside its block RAMs (the banks
    sit all over a large device, and a shared register's nets to them were the critical
    path).

    With ``wide_read``, a second way to read: while ``wrd_en`` is held, the banks read for
    ``wrd_addr`` instead of ``rd_addr``, and ``wrd_data[i]`` holds the word at ``wrd_addr + i``
    (``i < banks``) ``WIDE_LATENCY`` = 3 cycles after ``wrd_addr`` (the banks' rows, the read,
    the rotation: each a register). ``rd_data`` means nothing then.

    With ``read_reg`` each bank's output waits in a register (the block RAM's slow output
    lands there before any mux): every read takes a cycle more (``wide_latency`` too).

    ``store="spram"`` keeps the buffer in one iCE40UP5K SB_SPRAM256KA (16K x 16): bank b is
    the b-th ``16 / banks``-bit slice of each word (``banks`` ≤ 4 and ``data_bits`` ≤ that
    slice). It is single-ported: a write takes the port for its cycle (a read issued then
    reads nothing), and it writes one value per cycle, ``wr_data[0]`` (post_lanes = 1), by
    its slice's write mask. An engine that only reads or only writes a buffer during an op
    (a chain, ping-ponging) never asks for both. Off iCE40 (``platform.family``) the same
    port is an Amaranth memory with the primitive's behaviour (its output holds while it
    writes), for simulation.
    """

    WIDE_LATENCY = 3

    def __init__(
        self,
        depth: int,
        data_bits: int,
        banks: int = 1,
        addr_bits: int = 24,
        write_reg: bool = False,
        wide_read: bool = False,
        read_reg: bool = False,
        store: str = "bram",
    ):
        assert banks & (banks - 1) == 0 and write_reg in (0, 1, 2)
        if store == "spram":
            assert banks <= 4 and data_bits <= SPRAM_WIDTH // banks and not wide_read
            assert -(-depth // banks) <= SPRAM_DEPTH, "one SPRAM holds 16K words"
        self.depth, self.data_bits, self.banks, self.store = depth, data_bits, banks, store
        self.write_reg, self.wide_read, self.read_reg = int(write_reg), wide_read, read_reg
        self.wide_latency = self.WIDE_LATENCY + int(read_reg)
        ports = {
            "rd_addr": In(addr_bits),
            "rd_data": Out(signed(data_bits)),
            "rd_banks": Out(signed(data_bits)).array(banks),
            "wr_addr": In(addr_bits),
            "wr_data": In(signed(data_bits)).array(banks),
            "wr_en": In(1).array(banks),
        }
        if wide_read:
            ports |= {
                "wrd_addr": In(addr_bits),
                "wrd_en": In(1),
                "wrd_data": Out(signed(data_bits)).array(banks),
            }
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        n, B = self.banks, self.banks.bit_length() - 1
        rows = -(-self.depth // n)
        sel = Signal(range(n))
        m.d.sync += sel.eq(self.rd_addr if n == 1 else self.rd_addr[:B])
        if self.read_reg:  # (the words come a cycle later: so does their select)
            sel_q = Signal(range(n), name="sel_q")
            m.d.sync += sel_q.eq(sel)
            sel = sel_q
        if self.store == "spram":
            write = (self.wr_addr, self.wr_data[0], self.wr_en[0])
            if self.write_reg == 2:
                addr, data, en = self._write_copy(m, "spram_in")
                write = (addr, data[0], en[0])
            datas = self._spram(m, platform, rows, *write)
        else:
            datas = self._banks(m, rows)
        m.d.comb += self.rd_data.eq(Array(datas)[sel] if n > 1 else datas[0])
        m.d.comb += [self.rd_banks[b].eq(datas[b]) for b in range(n)]
        return m

    def _read_reg(self, m, data, b):
        """Bank ``b``'s word ``data``, through its output register with ``read_reg``."""
        if not self.read_reg:
            return data
        q = Signal(signed(self.data_bits), name=f"rd_q{b}", reset_less=True)
        m.d.sync += q.eq(data)
        return q

    def _write_copy(self, m, name):
        """The write's address, data and enables, a cycle later in registers of their own."""
        addr = Signal.like(self.wr_addr, name=f"{name}_addr", reset_less=True)
        data = [
            Signal.like(d, name=f"{name}_d{i}", reset_less=True) for i, d in enumerate(self.wr_data)
        ]
        en = [Signal(name=f"{name}_en{i}") for i in range(self.banks)]
        m.d.sync += addr.eq(self.wr_addr)
        m.d.sync += [q.eq(d) for q, d in zip(data, self.wr_data, strict=True)]
        m.d.sync += [q.eq(e) for q, e in zip(en, self.wr_en, strict=True)]
        return addr, data, en

    def _spram(self, m, platform, rows, wr_addr, wr_data, en):
        """The banks as slices of one single-ported 16-bit SPRAM word (see the class)."""
        n, B, D = self.banks, self.banks.bit_length() - 1, self.data_bits
        slot = SPRAM_WIDTH // n
        we, row = Signal(name="spram_we"), Signal(range(rows), name="spram_wr_row")
        din, mask = Signal(SPRAM_WIDTH, name="spram_din"), Signal(4, name="spram_mask")
        s = wr_addr[:B] if n > 1 else 0
        value = Cat(wr_data, Const(0, slot - D)) if slot > D else wr_data
        domain = m.d.sync if self.write_reg else m.d.comb
        domain += [
            we.eq(en),
            row.eq(wr_addr >> B),
            din.eq(Cat(*[value] * n)),
            mask.eq(Cat(*[(en & (s == b)).replicate(slot // 4) for b in range(n)])),
        ]
        addr = Signal(range(SPRAM_DEPTH), name="spram_addr")
        dout = Signal(SPRAM_WIDTH, name="spram_dout")
        m.d.comb += addr.eq(Mux(we, row, self.rd_addr >> B))
        if str(getattr(platform, "family", "")).lower() == "ice40":  # (amaranth: "iCE40")
            out = sb_spram256ka(m, "spram", address=addr, data_in=din, mask=mask, write=we)
            m.d.comb += dout.eq(out)
        else:  # the primitive's behaviour: a read unless writing, output held while writing
            mem = memory.Memory(shape=SPRAM_WIDTH, depth=rows, init=[])
            m.submodules.spram = mem
            rd = mem.read_port(transparent_for=())
            wr = mem.write_port(granularity=4)
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(~we), wr.addr.eq(addr), wr.data.eq(din)]
            m.d.comb += wr.en.eq(mask)
            m.d.comb += dout.eq(rd.data)
        return [self._read_reg(m, dout[b * slot : b * slot + D].as_signed(), b) for b in range(n)]

    def _banks(self, m, rows):
        """One simple-dual-port memory per bank (block RAM)."""
        n, B = self.banks, self.banks.bit_length() - 1
        datas = []
        # writes: element i goes to bank (wr_addr + i) mod n, so bank b takes element
        # (b − s) mod n (s = wr_addr mod n: a rotation, log2(n) levels of 2:1 muxes) at row
        # wr_addr / n, or the row after it when b < s (one adder for all banks)
        s_ = self.wr_addr[:B] if n > 1 else 0

        def bank_rows(addr, name):
            """Bank b's row of the ``n`` words from ``addr``: ``addr / n``, or the row after
            it when ``b < addr mod n``."""
            row0 = Signal(range(rows + 1), name=f"{name}_row0")
            row1 = Signal(range(rows + 1), name=f"{name}_row1")
            m.d.comb += [row0.eq(addr >> B), row1.eq(row0 + 1)]
            return [Mux(b < addr[:B], row1, row0) if n > 1 else row0 for b in range(n)]

        def rotated(data, en, s):
            """Bank b's (data, enable) of the write: element (b − s) mod n."""
            vec = [Cat(data[i], en[i]) for i in range(n)]
            for k in range(B):
                step = 1 << k
                vec = [Mux(s[k], vec[(b - step) % n], vec[b]) for b in range(n)]
            return vec

        if self.write_reg < 2:
            wr_rows = bank_rows(self.wr_addr, "wr")
            vec = rotated(self.wr_data, self.wr_en, s_)
        else:  # each bank's rotation and rows from its own copy of the write (only its
            wr_rows, vec = [], []  # output's cone of the rotation is left)
            for b in range(n):
                addr, data, en = self._write_copy(m, f"wr{b}_in")
                wr_rows.append(bank_rows(addr, f"wr{b}")[b])
                vec.append(rotated(data, en, addr[:B] if n > 1 else 0)[b])
        if self.wide_read:
            # the wide read's rows, like the write's: bank b holds word (b − s) mod n of it,
            # at row wrd_addr / n or the one after (registered); the words come out rotated
            # back by s (held for the read) into registers
            ws, ws_q = Signal(range(n), name="wrd_s"), Signal(range(n), name="wrd_s_q")
            m.d.sync += [ws.eq(self.wrd_addr[:B] if n > 1 else 0), ws_q.eq(ws)]
            if self.read_reg:
                ws_qq = Signal(range(n), name="wrd_s_qq")
                m.d.sync += ws_qq.eq(ws_q)
                ws_q = ws_qq
            wrows = [Signal(range(rows + 1), name=f"wrd_row{b}_q") for b in range(n)]
            m.d.sync += [
                q.eq(r) for q, r in zip(wrows, bank_rows(self.wrd_addr, "wrd"), strict=True)
            ]
        for b in range(n):
            mem = memory.Memory(shape=signed(self.data_bits), depth=rows, init=[])
            m.submodules[f"bank{b}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            if self.wide_read:
                m.d.comb += rd.addr.eq(Mux(self.wrd_en, wrows[b], self.rd_addr >> B))
            else:
                m.d.comb += rd.addr.eq(self.rd_addr >> B)
            datas.append(self._read_reg(m, rd.data, b))
            v = Signal(self.data_bits + 1, name=f"wr_vec{b}")
            row = Signal(range(rows + 1), name=f"wr_row{b}")
            domain = m.d.sync if self.write_reg else m.d.comb
            domain += [v.eq(vec[b]), row.eq(wr_rows[b])]
            m.d.comb += [wr.addr.eq(row), wr.data.eq(v[:-1]), wr.en.eq(v[-1])]
        if self.wide_read:  # word i of the wide read is in bank (s + i) mod n
            vec = datas
            for k in range(B):
                step = 1 << k
                vec = [Mux(ws_q[k], vec[(i + step) % n], vec[i]) for i in range(n)]
            m.d.sync += [self.wrd_data[i].eq(vec[i]) for i in range(n)]
        return datas
