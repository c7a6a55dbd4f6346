"""ECP5 block RAM instantiated directly: what yosys's inference cannot give (DP16KD's output
register, ``REGMODE_B="OUTREG"``; yosys 0.50's ``brams_16kd.txt`` has no option for it).

A simulation model of the primitive as used here is ``fxpga/boards/sim_models/ecp5.v``.
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Instance, Mux, Signal

DP16KD_BITS = 18 * 1024  # data bits per block (the 2 parity bits of each 20-bit row unused)


def dp16kd_width(bits: int) -> int:
    """The DP16KD port width that holds ``bits``-bit words: 9 (2048 deep) or 18 (1024)."""
    if not 1 <= bits <= 18:
        raise ValueError(f"DP16KD words are at most 18 bits, not {bits}")
    return 9 if bits <= 9 else 18


def dp16kd_initvals(words, width: int) -> dict[str, int]:
    """``INITVAL_00`` .. ``INITVAL_3F`` for one block holding ``words`` (unsigned, < 2^width,
    at most ``18432 / width``): 16 rows of 20 bits per INITVAL, the 18 data bits of row ``r``
    at ``[20 * (r % 16) +: 18]`` of ``INITVAL_(r // 16)``; 9-bit word ``w`` is the half
    ``[9 * (w % 2) +: 9]`` of row ``w // 2``."""
    per_row = 18 // width
    if len(words) > DP16KD_BITS // width:
        raise ValueError(f"{len(words)} words of {width} bits do not fit one DP16KD")
    vals = [0] * 64
    for w, v in enumerate(words):
        if not 0 <= v < 1 << width:
            raise ValueError(f"word {w} = {v} is not a {width}-bit unsigned value")
        r = w // per_row
        vals[r // 16] |= v << (20 * (r % 16) + width * (w % per_row))
    return {f"INITVAL_{i:02X}": v for i, v in enumerate(vals)}


def dp16kd(m, name, *, width, rd_addr, rd_data, wr_addr, wr_data, wr_en, init=(), out_reg):
    """One DP16KD of ``width``-bit words (9 or 18): port A writes ``wr_data`` at ``wr_addr``
    when ``wr_en``; port B reads ``rd_addr`` into ``rd_data`` (``width`` bits) one cycle
    later, two with ``out_reg`` (the block's output register)."""
    shift = {9: 3, 18: 4}[width]

    def addr(a):  # the word address on AD13..AD<shift>; for 18 bits AD1..AD0 enable both bytes
        low = Const(0b11 if width == 18 else 0, shift)
        return Cat(low, a)[:14]

    ports = {}
    for port, a in (("A", addr(wr_addr)), ("B", addr(rd_addr))):
        ports |= {f"i_AD{port}{i}": a[i] if i < len(a) else Const(0) for i in range(14)}
        ports |= {f"i_CS{port}{i}": Const(0) for i in range(3)}
    ports |= {f"i_DIA{i}": wr_data[i] if i < len(wr_data) else Const(0) for i in range(18)}
    ports |= {f"i_DIB{i}": Const(0) for i in range(18)}
    dob = Signal(18, name=f"{name}_dob")
    ports |= {f"o_DOB{i}": dob[i] for i in range(18)}
    params = {f"p_{k}": Const(v, 320) for k, v in dp16kd_initvals(list(init), width).items()}
    m.submodules[name] = Instance(
        "DP16KD",
        p_DATA_WIDTH_A=width,
        p_DATA_WIDTH_B=width,
        p_REGMODE_A="NOREG",
        p_REGMODE_B="OUTREG" if out_reg else "NOREG",
        p_RESETMODE="SYNC",
        p_ASYNC_RESET_RELEASE="SYNC",
        p_CSDECODE_A="0b000",
        p_CSDECODE_B="0b000",
        p_WRITEMODE_A="NORMAL",
        p_WRITEMODE_B="NORMAL",
        p_GSR="DISABLED",
        **params,
        i_CLKA=ClockSignal(),
        i_CEA=Const(1),
        i_OCEA=Const(1),
        i_WEA=wr_en,
        i_RSTA=Const(0),
        i_CLKB=ClockSignal(),
        i_CEB=Const(1),
        i_OCEB=Const(1),
        i_WEB=Const(0),
        i_RSTB=Const(0),
        **ports,
    )
    m.d.comb += rd_data.eq(dob[: len(rd_data)])


def dp16kd_memory(m, name, *, bits, depth, rd_addr, wr_addr, wr_data, wr_en, init=(), out_reg):
    """A ``depth`` x ``bits`` memory of DP16KDs (as many as the depth needs); its read data
    (``bits`` wide, unsigned) comes one cycle after ``rd_addr``, two with ``out_reg``. Blocks
    past the first are selected by the address's high bits (a write enable each, a read mux
    after the blocks, its select delayed with the data)."""
    width = dp16kd_width(bits)
    per_block = DP16KD_BITS // width
    blocks = max(1, -(-depth // per_block))
    lo = (per_block - 1).bit_length()
    mask = (1 << bits) - 1
    init = [v & mask for v in init]
    outs = []
    for b in range(blocks):
        q = Signal(bits, name=f"{name}_q{b}")
        sel_w = wr_en if blocks == 1 else wr_en & (wr_addr[lo:] == b)
        dp16kd(
            m,
            f"{name}_b{b}",
            width=width,
            rd_addr=rd_addr[:lo],
            rd_data=q,
            wr_addr=wr_addr[:lo],
            wr_data=wr_data,
            wr_en=sel_w,
            init=init[b * per_block : (b + 1) * per_block],
            out_reg=out_reg,
        )
        outs.append(q)
    data = Signal(bits, name=f"{name}_data")
    if blocks == 1:
        m.d.comb += data.eq(outs[0])
        return data
    sel = rd_addr[lo:]
    for k in range(1 + int(out_reg)):
        s = Signal(len(sel), name=f"{name}_sel{k}")
        m.d.sync += s.eq(sel)
        sel = s
    v = outs[0]
    for b in range(1, blocks):
        v = Mux(sel == b, outs[b], v)
    m.d.comb += data.eq(v)
    return data
