"""The top ``Engine``: buffers, weight banks, sequencer, MAC array and post-processing."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..limits import check_range
from . import compiler
from .buffers import FeatureBuffer
from .compiler import EngineConfig, Program, desc_fields
from .desc import (
    HEADER_WORDS,
    check_fits,
    coord_bits_for,
    descriptor_layout,
    field_bits_for,
    field_widths,
)
from .fanout import register_copies, share
from .mac import MACArray
from .onehot import OneHotFSM
from .postproc import PostProcessor
from .taps import TapGenerator
from .weights import WeightBanks

REGION_PROGRAM, REGION_BIAS, REGION_WEIGHTS = 0, 1, 2

ConfigBus = wiring.Signature({"addr": Out(32), "data": Out(32), "en": Out(1)})

assert MACArray.LATENCY + 1 == compiler.TAP_TO_ACC
assert TapGenerator.LATENCY == compiler.TAP_LATENCY
assert PostProcessor.LATENCY == compiler.POST_LATENCY
assert PostProcessor.ADD_STAGES == compiler.ADD_STAGES


def engine_field_bits(
    config: EngineConfig, fmap_depth: int, wmem_depth: int, bmem_depth: int
) -> int:
    return field_bits_for(config.data_bits, fmap_depth, wmem_depth, bmem_depth)


def program_words(
    prog: Program, field_bits: int | None = None, coord_bits: int | None = None
) -> list[int]:
    """The program memory image: a header, then one 32-bit word per descriptor field.

    Every field must fit the engine's field widths (by default: an engine sized to ``prog``).
    """
    if field_bits is None:
        field_bits = engine_field_bits(
            prog.config, prog.fmap_depth, prog.wmem_depth, prog.bmem_depth
        )
        coord_bits = coord_bits_for(prog.descriptors)
    widths = field_widths(field_bits, coord_bits, desc_fields(prog.config))
    words = [len(prog.ops), prog.in_size, prog.out_size, prog.out_buf, prog.out_base]
    for i, d in enumerate(prog.descriptors):
        check_fits(d, widths, f"op {i} ({prog.ops[i].name})")
        words += [d[k] & 0xFFFFFFFF for k in widths]
    return words


def _bits_for(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


class Engine(wiring.Component):
    """Runs a compiled network layer by layer.

    Protocol: when the first input value is offered the engine reads its program header
    (so run-time program writes apply from the next inference), then accepts ``in_size``
    values on ``i`` (C-order, the model's input format), computes every op, and sends
    ``out_size`` values on ``o``; then it waits for the next input. ``cycles`` holds the
    compute cycles of the last inference (from the last input value to the first output),
    ``op_index``/``running`` show progress.

    **Throughput**: ``lanes`` MACs per cycle while an op runs; an op costs
    ``compiler.program_cycles`` cycles (``Program.estimate``). **Widths**: activations
    ``data_bits``, weights ``weight_bits``, accumulators ``acc_bits`` (modular).

    Memories are initialised from ``program`` (a self-contained bitstream). All of them can
    also be written at run time, while the engine waits for input, through ``cfg`` (a write
    lands in the cycle after it is presented; in SPRAM weights, or with ``broadcast_copies >
    1``, a weight write lands one cycle later):
    ``addr[28:32]`` is the region (0 program words, 1 biases, 2 weights), for weights
    ``addr[20:28]`` the lane, and ``addr[0:20]`` the index; ``data`` is the value.
    """

    def __init__(
        self,
        config: EngineConfig,
        program: Program | None = None,
        *,
        fmap_depth: int | None = None,
        wmem_depth: int | None = None,
        bmem_depth: int | None = None,
        max_ops: int | None = None,
    ):
        self.config = cfg = config
        self.program = program
        p = program
        self.fmap_depth = fmap_depth or cfg.fmap_depth or (p.fmap_depth if p else 1024)
        self.wmem_depth = wmem_depth or cfg.wmem_depth or (p.wmem_depth if p else 1024)
        self.bmem_depth = bmem_depth or cfg.bmem_depth or (p.bmem_depth if p else 256)
        self.max_ops = max_ops or cfg.max_ops or (len(p.ops) if p else 16)
        for k in ("fmap_depth", "wmem_depth", "bmem_depth", "max_ops"):  # before any memory
            check_range(f"Engine {k}", getattr(self, k), *compiler.CONFIG_BOUNDS[k])
        if cfg.fmap_store == "spram":  # one SPRAM per buffer
            most = compiler.SPRAM_DEPTH * cfg.banks
            check_range("Engine fmap_depth", self.fmap_depth, 1, most, "one SPRAM per buffer")
        self.prog_depth = HEADER_WORDS + len(desc_fields(cfg)) * self.max_ops
        self.field_bits = engine_field_bits(cfg, self.fmap_depth, self.wmem_depth, self.bmem_depth)
        # coordinates sized to the baked program; a run-time program may need the full width
        self.coord_bits = (
            min(self.field_bits, coord_bits_for(p.descriptors)) if p else self.field_bits
        )
        super().__init__(
            {
                "i": In(stream.Signature(signed(cfg.data_bits))),
                "o": Out(stream.Signature(signed(cfg.data_bits))),
                "cfg": In(ConfigBus),
                "cycles": Out(32),
                "op_index": Out(8),
                "running": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg, p = self.config, self.program
        lanes, D, WB, A = cfg.lanes, cfg.data_bits, cfg.weight_bits, cfg.acc_bits

        # ---- memories
        def mem(name, shape, depth, init, attrs=None):
            mm = memory.Memory(shape=shape, depth=depth, init=init, attrs=attrs)
            m.submodules[name] = mm
            return mm, mm.read_port(), mm.write_port()

        W = cfg.post_lanes
        FB, CB = self.field_bits, self.coord_bits
        NB = cfg.banks
        fmap = [
            FeatureBuffer(
                self.fmap_depth,
                D,
                NB,
                FB,
                write_reg=2 * int(cfg.fmap_write_reg),
                wide_read=cfg.branches,
                read_reg=cfg.fmap_read_reg,
                store=cfg.fmap_store,
            )
            for _ in range(2)
        ]
        m.submodules.fmap0, m.submodules.fmap1 = fmap
        spram = cfg.weight_store == "spram"
        # with fmap_read_reg the weight address waits a cycle for the activation: with
        # broadcast copies that register is the first level of a tree of copies (one per
        # broadcast copy, then one per two lanes), so no copy drives many block RAMs
        tree = cfg.fmap_read_reg and cfg.broadcast_copies > 1 and lanes >= 2 * cfg.broadcast_copies
        weight_tree = {"copies": cfg.broadcast_copies}
        if tree:
            bc = cfg.broadcast_copies
            weight_tree = {"copies": bc * (lanes // (2 * bc)), "pre_copies": bc}
        m.submodules.weights = weights = WeightBanks(
            lanes,
            WB,
            compiler.SPRAM_DEPTH if spram else self.wmem_depth,
            init=p.wmem if p and not spram else None,
            store=cfg.weight_store,
            out_reg=cfg.weight_out_reg,
            writable=cfg.weight_writes,
            pack=cfg.weight_pack,
            **weight_tree,
        )
        brows = -(-self.bmem_depth // W)
        lut = {"ram_style": "distributed"} if cfg.bias_lutram else None
        # with channel_shifts: a channel's shift offset above its bias (Program.bias_words)
        bshape = unsigned(A + compiler.CHANNEL_SHIFT_BITS) if cfg.channel_shifts else signed(A)
        words = p.bias_words if p else []
        bias = [mem(f"bias{i}", bshape, brows, words[i::W], lut) for i in range(W)]
        pwords = program_words(p, FB, CB) if p else []
        _, prd, pwr = mem("program", unsigned(32), self.prog_depth, pwords)
        # program words as the sequencer takes them: `lag` cycles after their address
        pdata, lag = prd.data, 1 + int(cfg.program_read_reg)
        if cfg.program_read_reg:  # the block RAM's slow output lands in a register first
            pdata = Signal(32, name="pdata", reset_less=True)
            m.d.sync += pdata.eq(prd.data)

        # ---- runtime writes, registered once (off the host's and the memories' paths)
        wcfg = Signal(data.StructLayout({"addr": 32, "data": 32, "en": 1}))
        m.d.sync += [wcfg.addr.eq(self.cfg.addr), wcfg.data.eq(self.cfg.data)]
        m.d.sync += wcfg.en.eq(self.cfg.en)
        region, lane_sel, index = wcfg.addr[28:32], wcfg.addr[20:28], wcfg.addr[:20]
        m.d.comb += [
            pwr.addr.eq(index),
            pwr.data.eq(wcfg.data),
            pwr.en.eq(wcfg.en & (region == REGION_PROGRAM)),
        ]
        # the biases sit by the post-processor, far from the host's side: their writes wait
        # in a register more, enables decoded (a 128-lane ULX3S had 12 ns of routing from
        # wcfg to a bias memory's write enable)
        bcfg = Signal(data.StructLayout({"addr": range(brows), "data": 32, "en": W}))
        m.d.sync += [bcfg.addr.eq(index // W), bcfg.data.eq(wcfg.data)]
        m.d.sync += bcfg.en.eq(Mux(wcfg.en & (region == REGION_BIAS), 1 << (index % W), 0))
        for i, (_, _, bwr) in enumerate(bias):
            m.d.comb += [bwr.addr.eq(bcfg.addr), bwr.data.eq(bcfg.data), bwr.en.eq(bcfg.en[i])]
        m.d.comb += [
            weights.wr_addr.eq(index),
            weights.wr_lane.eq(lane_sel),
            weights.wr_data.eq(wcfg.data),
            weights.wr_en.eq(wcfg.en & (region == REGION_WEIGHTS)),
        ]

        # ---- datapath
        names = desc_fields(cfg)
        m.submodules.taps = taps = TapGenerator(
            lanes, cfg.items, FB, CB, names, NB, split=cfg.channel_split
        )
        # depthwise and channel-split ops may read NB channels per tap
        wide_reads = cfg.wide_reads and NB > 1
        m.submodules.mac = mac = MACArray(
            lanes,
            D + int(cfg.unsigned),  # (an unsigned word zero-extended)
            WB,
            A,
            pre=cfg.operand_regs,
            groups=cfg.broadcast_copies,
            clear=cfg.acc_clear,
            w_pre=cfg.operand_regs - int(cfg.weight_out_reg),
            words=NB if wide_reads else 1,
            reduce=NB if cfg.channel_split else 1,
        )
        m.submodules.post = post = PostProcessor(
            lanes,
            D,
            A,
            _bits_for(brows),
            W,
            FB,
            CB,
            copies=cfg.broadcast_copies,
            snapshots=not cfg.acc_clear,
            fields=names,
            wide_latency=fmap[0].wide_latency,
            channel_shifts=cfg.channel_shifts,
            unsigned_values=cfg.unsigned,
        )
        desc = Signal(descriptor_layout(FB, CB, names))
        m.d.comb += [taps.desc.eq(desc), post.desc.eq(desc)]
        if cfg.channel_split:  # (the descriptor is steady while an op runs and drains)
            split_op = Signal(name="split_op")
            m.d.sync += split_op.eq(desc.dw[1] & ~desc.dw[0])
            m.d.comb += mac.split.eq(split_op)

        in_buf = desc.in_buf[0]
        tap = taps.tap
        # a tap's activation comes `FR` cycles after the read's (fmap_read_reg): its enable,
        # weight address and depthwise mask wait as long
        FR = int(cfg.fmap_read_reg)
        mac_d1 = tap.mac
        for k in range(1 + FR):
            mq = Signal(name=f"mac_d{k + 1}")
            m.d.sync += mq.eq(mac_d1)
            mac_d1 = mq
        in_data = Mux(in_buf, fmap[1].rd_data, fmap[0].rd_data)
        in_u = None
        if cfg.unsigned:  # the op's input is unsigned (steady while an op runs and drains)
            in_u = Signal(name="in_unsigned")
            m.d.sync += in_u.eq(desc.signs[0])

        def operand(word):
            """The MAC operand: with ``unsigned``, the word zero- or sign-extended."""
            return word if in_u is None else Cat(word, Mux(in_u, 0, word[-1])).as_signed()

        m.d.comb += [mac.en.eq(mac_d1), mac.a.eq(operand(in_data))]
        if wide_reads:
            # word j of the operands: the word read (rd_data), or in a wide depthwise op
            # bank j's (channel j of an aligned pixel: lanes j, j + NB, ... take it). A 2:1
            # mux per word after the one shared narrow read mux: logic linear in the banks
            # (a mux of all banks per word grew with their square and congested the ULX3S)
            for j in range(NB):
                bank_j = Mux(in_buf, fmap[1].rd_banks[j], fmap[0].rd_banks[j])
                m.d.comb += mac.a_wide[j].eq(operand(Mux(desc.dw[1], bank_j, in_data)))
        w_addr = tap.w_addr
        if FR and not tree:  # (else the tree's first level)
            w_addr = Signal.like(tap.w_addr, name="w_addr_d")
            m.d.sync += w_addr.eq(tap.w_addr)
        m.d.comb += weights.rd_addr.eq(w_addr)
        # a depthwise op's tap feeds only lane `sel`: the others' weights read as 0 (the mask
        # follows the tap as long as the weight read takes)
        masked, sel = tap.masked, tap.sel
        if cfg.depthwise:
            delay = 1 + int(cfg.broadcast_copies > 1) + int(cfg.weight_out_reg) + FR
            for k in range(delay - 1):
                mq, sq = Signal(name=f"mask_d{k + 1}"), Signal.like(sel, name=f"sel_d{k + 1}")
                m.d.sync += [mq.eq(masked), sq.eq(sel)]
                masked, sel = mq, sq
            # the last in a copy per broadcast copy: it reaches every lane's weight (a 64-lane
            # ULX3S DS-CNN, seed 2: 73.5 MHz, one register's routes to the multipliers)
            copies = register_copies(m, Cat(masked, sel), cfg.broadcast_copies, platform, "mask")
            mask_sel = share(copies, lanes)
        for lane in range(lanes):
            w_lane = weights.rd_data[lane]
            if cfg.depthwise:  # (a wide op's tap feeds the lanes of one pass: lane / NB)
                mine = Mux(desc.dw[1], lane // NB, lane) if wide_reads else lane
                masked, sel = mask_sel[lane][0], mask_sel[lane][1:]
                w_lane = Mux(masked & (sel != mine), 0, w_lane)
            m.d.comb += mac.w[lane].eq(w_lane)

        # window metadata travels tap_to_acc cycles to meet its accumulators: `last` down a
        # delay line; the metadata too when windows can follow each other closer than that,
        # else (consecutive `last`s are >= items cycles apart) it waits in one register
        t2a = compiler.tap_to_acc(cfg)
        last_q, meta_q = tap.last, Signal(post.meta_layout)
        m.d.comb += [
            meta_q.padwin.eq(tap.padwin),
            meta_q.pool_first.eq(tap.pool_first),
            meta_q.pool_last.eq(tap.pool_last),
            meta_q.out_addr.eq(tap.out_addr),
            meta_q.b_addr.eq(tap.b_addr),
            meta_q.nvalid.eq(tap.nvalid),
        ]
        if cfg.items >= t2a:
            held = Signal(post.meta_layout)
            with m.If(tap.last):
                m.d.sync += held.eq(meta_q)
            meta_q = held
        for k in range(t2a):
            nl = Signal(name=f"last_d{k + 1}")
            m.d.sync += nl.eq(last_q)
            m.d.comb += post.capture_next.eq(last_q)  # (the stage before the last)
            last_q = nl
            if cfg.items < t2a:
                nm = Signal(post.meta_layout, name=f"meta_d{k + 1}")
                m.d.sync += nm.eq(meta_q)
                meta_q = nm
        m.d.comb += [
            post.capture.eq(last_q),
            post.meta.eq(meta_q),
            mac.clear.eq(post.capture),  # (used with acc_clear)
            mac.clear_next.eq(post.capture_next),
        ]
        for i, (_, brd, _) in enumerate(bias):
            m.d.comb += [brd.addr.eq(post.bias_addr[i]), post.bias_data[i].eq(brd.data[:A])]
            if cfg.channel_shifts:
                m.d.comb += post.shift_data[i].eq(brd.data[A:])
        for lane in range(lanes):
            m.d.comb += post.acc[lane].eq(mac.acc[lane])
        if cfg.branches:
            # an op that adds reads the other operand through the wide read port of the buffer
            # it writes (the taps read the other buffer); the ports' selects are registers,
            # set while such an op runs
            wides = []
            for b, f in enumerate(fmap):
                wide = Signal(name=f"fmap{b}_wide")
                m.d.sync += wide.eq(self.running & desc.add[0] & (desc.out_buf[0] == b))
                m.d.comb += [f.wrd_addr.eq(post.skip_addr), f.wrd_en.eq(wide)]
                wides.append(wide)
            for i in range(W):
                pick = Mux(desc.out_buf[0], fmap[1].wrd_data[i], fmap[0].wrd_data[i])
                m.d.comb += post.skip_data[i].eq(pick)

        # ---- sequencer
        n_ops, in_size, out_size, out_buf, out_base = (
            Signal(FB, name=n) for n in ("n_ops", "in_size", "out_size", "out_buf", "out_base")
        )
        cnt = Signal(FB)
        out_ptr = Signal(FB)  # the output's next address: out_base + cnt
        op = Signal(8)
        cycles = Signal(32)
        counting = Signal()
        # compares the sequencer would otherwise chain before its state register, precomputed:
        # `at_last` is set when `cnt` reaches the current state's final count (from a compare
        # with that count - 1 a cycle earlier)
        in_m2, out_m2, ops_left = Signal(FB), Signal(FB), Signal(8)
        in_one, out_one, long_input, op_last, at_last = (Signal() for _ in range(5))
        m.d.sync += [
            in_m2.eq(in_size - 2),
            out_m2.eq(out_size - 2),
            in_one.eq(in_size == 1),
            out_one.eq(out_size == 1),
            long_input.eq(in_size > compiler.fetch_words(cfg)),
        ]
        m.d.comb += [self.op_index.eq(op), self.cycles.eq(cycles)]
        with m.If(counting):
            m.d.sync += cycles.eq(cycles + 1)

        rd_addr = Signal(FB)
        for f in fmap:
            m.d.comb += f.rd_addr.eq(rd_addr)
        m.d.comb += rd_addr.eq(tap.addr)

        # descriptor prefetcher: reads the NF words at `pf_base` (the next op's descriptor, kept
        # incrementally: no multiplier) into `nxt` while an op runs; busy NF + lag cycles
        nf = len(desc_fields(cfg))
        nxt = Signal(descriptor_layout(FB, CB, names)) if cfg.prefetch else desc
        pf_start, pf_busy = Signal(), Signal()
        start = Signal()  # taps.start from a flip-flop: high exactly while in START
        in_ready, out_valid = Signal(), Signal()  # the same for LOAD and OUT_SEND
        m.d.comb += [self.i.ready.eq(in_ready), self.o.valid.eq(out_valid)]
        pf_base, pf_cnt = Signal(range(self.prog_depth + 1)), Signal(range(nf + lag))
        # the read address pf_base + pf_cnt, kept in a register of its own (no adder before
        # the memory): `pf_start_addr` is pf_base as it is from the cycle after pf_start
        pf_addr, pf_start_addr = Signal.like(pf_base), Signal.like(pf_base)
        m.d.comb += pf_start_addr.eq(pf_base)
        with m.If(pf_start):  # (never while pf_busy)
            m.d.sync += [pf_busy.eq(1), pf_cnt.eq(0), pf_addr.eq(pf_start_addr)]
        with m.Elif(pf_busy):
            m.d.sync += [pf_cnt.eq(pf_cnt + 1), pf_addr.eq(pf_addr + 1)]
            with m.If(pf_cnt == nf + lag - 1):
                m.d.sync += pf_busy.eq(0)
        with m.If(pf_busy), m.Switch(pf_cnt):  # word k arrives while pf_cnt = k + lag
            for k, (name, width) in enumerate(field_widths(FB, CB, names).items()):
                with m.Case(k + lag):
                    m.d.sync += nxt[name].eq(pdata[:width])
        m.d.comb += prd.addr.eq(pf_addr)

        m.d.sync += start.eq(0)
        m.d.comb += taps.start.eq(start)
        # post-processor writes go to the output buffer of the running op; LOAD's writes of
        # the input (below: they win) select on LOAD's state flag, a register (the post-
        # processor is idle then): nothing but the buffer's own enable on the write path
        for b, f in enumerate(fmap):
            # (without branches an op writes the buffer it does not read)
            active = desc.out_buf[0] == b if cfg.branches else in_buf != b
            wr_addr, wr_data = post.wr_addr, list(post.wr_data)
            wr_en = [post.wr_en[i] & active for i in range(W)]
            m.d.comb += f.wr_addr.eq(wr_addr)
            m.d.comb += [f.wr_data[i].eq(wr_data[i]) for i in range(W)]
            m.d.comb += [f.wr_en[i].eq(wr_en[i]) for i in range(W)]
            # (with more banks than post-processing lanes the other write lanes stay off)
        fsm = OneHotFSM(m, "IDLE", "seq")  # one-hot: see OneHotFSM
        with fsm.state("IDLE"):  # the header is read per inference: run-time writes count
            # (cnt and at_last are 0 here; no prefetch runs: the header read starts at 0 —
            # set whatever i.valid is, which keeps it off these registers' logic)
            m.d.sync += [pf_base.eq(0), pf_cnt.eq(0), pf_addr.eq(0)]
            with m.If(self.i.valid):
                fsm.next("HEADER")
        with fsm.state("HEADER"):  # read at pf_base + pf_cnt = cnt (no address mux)
            m.d.sync += [cnt.eq(cnt + 1), at_last.eq(cnt == HEADER_WORDS + lag - 2)]
            with m.Switch(cnt):
                for k, sig in enumerate((n_ops, in_size, out_size, out_buf, out_base)):
                    with m.Case(k + lag):
                        m.d.sync += sig.eq(pdata)
            with m.If(at_last):
                m.d.sync += [cnt.eq(0), at_last.eq(in_one), pf_base.eq(HEADER_WORDS)]
                m.d.sync += in_ready.eq(1)
                # a long input hides op 0's descriptor fetch (deterministically: the
                # load takes at least in_size cycles, whatever the stream's stalls)
                m.d.comb += [pf_start.eq(long_input), pf_start_addr.eq(HEADER_WORDS)]
                fsm.next("LOAD")
            with m.Else():
                m.d.sync += [pf_cnt.eq(pf_cnt + 1), pf_addr.eq(pf_addr + 1)]
        load_write = (cnt, self.i.payload, self.i.valid)
        if cfg.fmap_write_reg:
            # LOAD's writes wait a cycle in registers of their own too: the host's input
            # buffer (a block RAM, 5.8 ns clock-to-out) through this select to the banks'
            # write registers was MobileNetV1-0.25's critical path (ULX3S, 67.6 MHz for 75).
            # LOAD's last valid in cycle t is then in the memory for reads from t + 1 + 3
            # (this register, the buffer's two); the first op's first tap is read from
            # t + 2 + TAP_LATENCY on (NEXT sets start)
            assert 2 + compiler.TAP_LATENCY >= 1 + 3
            loading = Signal(name="loading")
            ld_addr, ld_data = Signal.like(cnt, name="ld_addr"), Signal.like(self.i.payload)
            ld_en = Signal(name="ld_en")
            m.d.sync += [loading.eq(fsm.ongoing("LOAD")), ld_addr.eq(cnt)]
            m.d.sync += [ld_data.eq(self.i.payload), ld_en.eq(fsm.ongoing("LOAD") & self.i.valid)]
            load_write = (ld_addr, ld_data, ld_en)
        with m.If(loading if cfg.fmap_write_reg else fsm.ongoing("LOAD")):
            m.d.comb += [
                fmap[0].wr_addr.eq(load_write[0]),
                fmap[0].wr_data[0].eq(load_write[1]),
                fmap[0].wr_en[0].eq(load_write[2]),
            ]
        with fsm.state("LOAD"):
            with m.If(self.i.valid):
                m.d.sync += [cnt.eq(cnt + 1), at_last.eq(cnt == in_m2)]
                with m.If(at_last):
                    m.d.sync += [cnt.eq(0), at_last.eq(0), op.eq(0), in_ready.eq(0)]
                    m.d.sync += [cycles.eq(0), counting.eq(1)]
                    m.d.sync += [ops_left.eq(n_ops - 1), op_last.eq(n_ops == 1)]
                    m.d.comb += pf_start.eq(~long_input)
                    fsm.next("NEXT")
        with fsm.state("NEXT"):  # wait for the prefetched descriptor, start fetching the next
            with m.If(~pf_busy):
                if cfg.prefetch:
                    m.d.sync += [desc.eq(nxt), pf_base.eq(pf_base + nf)]
                    m.d.comb += [pf_start.eq(~op_last), pf_start_addr.eq(pf_base + nf)]
                m.d.sync += start.eq(1)
                fsm.next("START")
        with fsm.state("FETCH"):  # without prefetch: read this op's descriptor now
            m.d.sync += pf_base.eq(pf_base + nf)
            m.d.comb += [pf_start.eq(1), pf_start_addr.eq(pf_base + nf)]
            fsm.next("NEXT")
        with fsm.state("START"):
            m.d.sync += self.running.eq(1)
            fsm.next("RUN")
        with fsm.state("RUN"), m.If(taps.done):
            fsm.next("DRAIN")
        with fsm.state("DRAIN"):
            m.d.sync += [cnt.eq(cnt + 1), at_last.eq(cnt == compiler.drain_cycles(cfg) - 2)]
            with m.If(at_last):
                m.d.sync += [cnt.eq(0), at_last.eq(op_last & out_one), op.eq(op + 1)]
                m.d.sync += [ops_left.eq(ops_left - 1), op_last.eq(ops_left == 1)]
                with m.If(op_last):
                    m.d.sync += [counting.eq(0), self.running.eq(0), out_ptr.eq(out_base)]
                    if cfg.branches:  # the output is read narrow from the next cycle on
                        m.d.sync += [w.eq(0) for w in wides]
                    fsm.next("OUT_READ")
                with m.Else():
                    fsm.next("NEXT" if cfg.prefetch else "FETCH")
        # outputs leave from a register (the buffers sit by the post-processor, the consumer
        # may be far: on a 128-lane ULX3S that route was the critical path)
        out_payload = Signal(signed(D))
        m.d.comb += self.o.payload.eq(out_payload)
        with fsm.state("OUT_READ"):
            m.d.comb += rd_addr.eq(out_ptr)
            m.d.sync += out_ptr.eq(out_ptr + 1)
            fsm.next("OUT_WAIT" if FR else "OUT_LATCH")
        if FR:
            with fsm.state("OUT_WAIT"):  # (the read's register)
                fsm.next("OUT_LATCH")
        with fsm.state("OUT_LATCH"):
            m.d.sync += out_payload.eq(Mux(out_buf[0], fmap[1].rd_data, fmap[0].rd_data))
            m.d.sync += out_valid.eq(1)
            fsm.next("OUT_SEND")
        with fsm.state("OUT_SEND"):
            with m.If(self.o.ready):
                m.d.sync += [cnt.eq(cnt + 1), at_last.eq(cnt == out_m2), out_valid.eq(0)]
                with m.If(at_last):
                    m.d.sync += [cnt.eq(0), at_last.eq(0)]
                    fsm.next("IDLE")
                with m.Else():
                    fsm.next("OUT_READ")
        return m
