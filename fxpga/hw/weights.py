"""Per-lane weight memories: block RAM (initialised) or iCE40 SPRAM (loaded at run time)."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .compiler import SPRAM_COUNT, SPRAM_DEPTH
from .ecp5 import dp16kd_memory
from .fanout import register_copies, share
from .ice40 import sb_spram256ka


class WeightBanks(wiring.Component):
    """``lanes`` weight memories read together at ``rd_addr`` (**latency 1**), written one
    lane at a time (``wr_*``, while the engine is idle).

    ``store="bram"``: one block-RAM memory per lane, initialised from ``init``.
    ``store="spram"``: iCE40 SB_SPRAM256KA, two lanes per 16-bit word (low byte even lane,
    high byte odd lane, written with the nibble mask), up to 8 lanes of 8-bit weights and 16K
    weights per lane. SPRAM has no initial contents: the host loads it (``CFG_WRITE``), and it
    is single-ported, so a write takes the address for its cycle; an SPRAM write is registered
    once more than a block-RAM one (it lands 2 cycles after it is presented).

    ``copies > 1`` (block RAM): the read address and the write are registered first, in
    ``copies`` copies that each drive ``lanes / copies`` memories (``fanout.register_copies``):
    the read **latency is 2**, and a write lands 2 cycles after it is presented.

    ``pre_copies = k`` (with ``copies > 1``, a multiple of ``k``): the read address passes a
    register tree, ``k`` copies each feeding ``copies / k`` of the copies: the read latency is
    3. A copy then drives a few block RAMs, which sit all over a large device (on the ULX3S
    a copy driving 16 lanes' DP16KD had 13.7 ns of routing to the farthest).

    ``out_reg`` (block RAM): the read data passes one register more (read latency + 1). On
    ECP5 it is the block RAM's own output register (DP16KD ``REGMODE_B="OUTREG"``, instances
    from ``ecp5.dp16kd_memory``): its clock-to-out is the register's, not the array's (5.8 ns
    at speed 6), so it can stand in for an operand register in front of the multipliers.

    ``pack > 1`` (block RAM, not ``writable``): lanes ``g·pack`` … ``g·pack + pack − 1`` share
    one memory of ``pack``-weight words, lane ``l`` in slice ``l mod pack`` (all lanes read
    the same address): ``EngineConfig.weight_pack``.
    """

    def __init__(
        self,
        lanes: int,
        weight_bits: int,
        depth: int,
        init=None,
        store="bram",
        copies: int = 1,
        out_reg: bool = False,
        writable: bool = True,
        pack: int = 1,
        pre_copies: int = 0,
    ):
        if store not in ("bram", "spram"):
            raise ValueError(f"store must be 'bram' or 'spram', not {store!r}")
        if store == "spram" and (weight_bits > 8 or lanes > 2 * SPRAM_COUNT or depth > SPRAM_DEPTH):
            raise ValueError("SPRAM weights hold at most 8 lanes of 8-bit weights, 16K deep")
        if not 1 <= copies <= lanes or (copies > 1 and store != "bram"):
            raise ValueError(f"copies must be 1..lanes, and 1 for SPRAM (got {copies})")
        if out_reg and store != "bram":
            raise ValueError("out_reg needs block-RAM weights")
        self.lanes, self.weight_bits, self.depth, self.copies = lanes, weight_bits, depth, copies
        if not writable and store != "bram":
            raise ValueError("SPRAM weights are written at run time: they need writable")
        if pre_copies and (copies < 2 or copies % pre_copies):
            raise ValueError(f"pre_copies must divide copies > 1 (got {pre_copies}, {copies})")
        self.pre_copies = pre_copies
        if pack > 1 and (store != "bram" or writable):
            raise ValueError("packed weights (pack > 1) are baked block RAM: not writable")
        self.out_reg, self.writable, self.pack = out_reg, writable, pack
        self.init, self.store = init, store
        abits = max(1, (depth - 1).bit_length())
        super().__init__(
            {
                "rd_addr": In(abits),
                "rd_data": Out(signed(weight_bits)).array(lanes),
                "wr_addr": In(abits),
                "wr_lane": In(8),
                "wr_data": In(signed(weight_bits)),
                "wr_en": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        if self.store == "bram":
            n = self.copies
            rd_addr, wr_addr, wr_data = [self.rd_addr], [self.wr_addr], [self.wr_data]
            if not self.writable:  # (no write port: constants, which the tools remove)
                wr_addr, wr_data = [Const(0, len(self.wr_addr))], [Const(0, self.weight_bits)]
            if n > 1 and self.pre_copies:
                k = self.pre_copies
                first = register_copies(m, self.rd_addr, k, platform, "rd_addr_t")
                rd_addr = [
                    c
                    for i, f in enumerate(first)
                    for c in register_copies(m, f, n // k, platform, f"rd_addr_{i}_")
                ]
            elif n > 1:
                rd_addr = register_copies(m, self.rd_addr, n, platform, "rd_addr")
            if n > 1 and self.writable:
                wr_addr = register_copies(m, self.wr_addr, n, platform, "wr_addr")
                wr_data = register_copies(m, self.wr_data, n, platform, "wr_data")
            rd_addr, wr_addr, wr_data = (share(c, self.lanes) for c in (rd_addr, wr_addr, wr_data))
            ecp5 = self.out_reg and getattr(platform, "family", None) == "ecp5"
            if self.pack > 1:
                self._packed(m, rd_addr, ecp5)
                return m
            for lane in range(self.lanes):
                init = self.init[lane] if self.init else []
                en = self.wr_en & (self.wr_lane == lane) if self.writable else Const(0)
                if n > 1 and self.writable:  # the lane's write enable, decoded and registered
                    we = Signal(name=f"we{lane}")
                    m.d.sync += we.eq(en)
                    en = we
                if ecp5:
                    data = dp16kd_memory(
                        m,
                        f"lane{lane}",
                        bits=self.weight_bits,
                        depth=self.depth,
                        rd_addr=rd_addr[lane],
                        wr_addr=wr_addr[lane],
                        wr_data=wr_data[lane],
                        wr_en=en,
                        init=init,
                        out_reg=True,
                    )
                    m.d.comb += self.rd_data[lane].eq(data.as_signed())
                    continue
                mem = memory.Memory(shape=signed(self.weight_bits), depth=self.depth, init=init)
                m.submodules[f"lane{lane}"] = mem
                rd = mem.read_port()
                m.d.comb += rd.addr.eq(rd_addr[lane])
                if self.writable:
                    wr = mem.write_port()
                    m.d.comb += [
                        wr.addr.eq(wr_addr[lane]),
                        wr.data.eq(wr_data[lane]),
                        wr.en.eq(en),
                    ]
                if self.out_reg:
                    q = Signal(signed(self.weight_bits), name=f"rd_q{lane}", reset_less=True)
                    m.d.sync += q.eq(rd.data)
                    m.d.comb += self.rd_data[lane].eq(q)
                else:
                    m.d.comb += self.rd_data[lane].eq(rd.data)
            return m
        # the write is registered once more, its lane decoded into one enable per SPRAM, so
        # that the address select comes straight from a flip-flop (the SPRAMs sit at the
        # device's edges: their address nets are long)
        wr_addr = Signal.like(self.wr_addr)
        byte, odd = Signal(8), Signal()
        m.d.sync += [wr_addr.eq(self.wr_addr), byte.eq(self.wr_data.as_unsigned()[:8])]
        m.d.sync += odd.eq(self.wr_lane[0])
        for j in range((self.lanes + 1) // 2):
            we = Signal(name=f"we{j}")
            m.d.sync += we.eq(self.wr_en & (self.wr_lane[1:] == j))
            dout = sb_spram256ka(
                m,
                f"spram{j}",
                address=Mux(we, wr_addr, self.rd_addr)[:14],
                data_in=Cat(byte, byte),
                mask=Mux(odd, 0b1100, 0b0011),
                write=we,
            )
            for k in range(2):
                if 2 * j + k < self.lanes:
                    m.d.comb += self.rd_data[2 * j + k].eq(dout[8 * k : 8 * k + self.weight_bits])
        return m

    def _packed(self, m, rd_addr, ecp5):
        """Groups of ``pack`` lanes, one memory each (read only), read at the address copy of
        the group's first lane."""
        k, bits = self.pack, self.weight_bits
        mask = (1 << bits) - 1
        for g in range(-(-self.lanes // k)):
            group = range(g * k, min(self.lanes, (g + 1) * k))
            init = []
            if self.init:  # (lanes' lists may be shorter than the depth: zeros past them)
                cols = [list(self.init[lane]) for lane in group]
                n = max(len(c) for c in cols)
                init = [
                    sum(
                        (c[a] & mask if a < len(c) else 0) << (bits * j) for j, c in enumerate(cols)
                    )
                    for a in range(n)
                ]
            width = bits * len(group)
            if ecp5:
                word = dp16kd_memory(
                    m,
                    f"group{g}",
                    bits=width,
                    depth=self.depth,
                    rd_addr=rd_addr[group[0]],
                    wr_addr=Const(0, len(self.wr_addr)),
                    wr_data=Const(0, width),
                    wr_en=Const(0),
                    init=init,
                    out_reg=True,
                )
            else:
                mem = memory.Memory(shape=width, depth=self.depth, init=init)
                m.submodules[f"group{g}"] = mem
                rd = mem.read_port()
                m.d.comb += rd.addr.eq(rd_addr[group[0]])
                word = rd.data
                if self.out_reg:
                    q = Signal(width, name=f"rd_q{g}", reset_less=True)
                    m.d.sync += q.eq(word)
                    word = q
            for j, lane in enumerate(group):
                m.d.comb += self.rd_data[lane].eq(word[bits * j : bits * (j + 1)].as_signed())
