"""The board side of the host protocol (``protocol.py``): frame parser, command executor,
reply sender, and the input/output buffers between the UART and the engine."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.engine import ConfigBus
from ..hw.onehot import OneHotFSM
from . import protocol as P


def crc16_step(m: Module, crc, byte, name: str = "crc"):
    """CRC-16/CCITT-FALSE of one more byte (combinational, 8 unrolled steps; each step gets
    its own signal so the expression does not grow exponentially)."""
    c = Signal(16, name=f"{name}_s0")
    m.d.comb += c.eq(crc ^ (byte << 8))
    for i in range(8):
        n = Signal(16, name=f"{name}_s{i + 1}")
        m.d.comb += n.eq(Mux(c[15], ((c << 1) ^ 0x1021)[:16], (c << 1)[:16]))
        c = n
    return c


class HostInterface(wiring.Component):
    """Parses request frames from ``rx``, drives the engine, and sends replies on ``tx``.

    A frame that stalls for ``byte_timeout`` cycles mid-way is dropped (the parser returns to
    looking for 0xA5), so truncated frames never wedge the board; a bad CRC gets a NAK.
    ``ident`` is the 22-byte IDENT reply, fixed at build time.
    """

    def __init__(
        self, *, data_bits: int, in_size: int, out_size: int, ident: bytes, byte_timeout: int
    ):
        if data_bits > 16:
            raise ValueError("the host protocol carries at most 16-bit values")
        self.data_bits, self.in_size, self.out_size = data_bits, in_size, out_size
        self.vbytes = P.value_bytes(data_bits)
        self.ident, self.byte_timeout = bytes(ident), byte_timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "i": Out(stream.Signature(signed(data_bits))),  # to the engine
            "o": In(stream.Signature(signed(data_bits))),  # from the engine
            "cfg": Out(ConfigBus),
            "cycles": In(32),
        })  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        vb = self.vbytes
        in_bytes, out_bytes = self.in_size * vb, self.out_size * vb

        inbuf = memory.Memory(shape=8, depth=max(1, in_bytes), init=[])
        outbuf = memory.Memory(shape=8, depth=max(1, out_bytes), init=[])
        m.submodules.inbuf, m.submodules.outbuf = inbuf, outbuf
        in_wr, in_rd = inbuf.write_port(), inbuf.read_port()
        out_wr, out_rd = outbuf.write_port(), outbuf.read_port()

        # ---- parser
        cmd, length, count, len_m2 = Signal(8), Signal(16), Signal(16), Signal(16)
        # flags registered a byte ahead (no wide compare before the state register): the
        # payload's last byte, a payload byte that goes to the input buffer
        pay_last, wr_ok = Signal(), Signal()
        crc, rx_crc = Signal(16, init=0xFFFF), Signal(16)
        cfg_rec = Signal(64)
        have_input = Signal()
        # quiet cycles since the last byte; `expired` (a flip-flop: the compare is a cycle
        # ahead) when they reach byte_timeout. The counter only resets (counting from a
        # constant with ones in it, yosys made a set/reset mix that nextpnr placed as a
        # broken carry chain)
        idle_timer, expired = Signal(range(self.byte_timeout + 1)), Signal()
        byte, got = self.rx.payload, self.rx.valid
        m.d.comb += self.rx.ready.eq(1)

        # ---- executor → sender: what to send
        r_cmd, r_len, r_code, r_ocmd = Signal(8), Signal(16), Signal(8), Signal(8)
        send, busy = Signal(), Signal()
        cycles_l = Signal(32)
        rx_next_crc = crc16_step(m, crc, byte, "rxcrc")

        # the timer restarts on every byte and counts otherwise (whatever the state: only the
        # frame's states look at it)
        with m.If(got):
            m.d.sync += [idle_timer.eq(0), expired.eq(0)]
        with m.Else():
            m.d.sync += [
                idle_timer.eq(idle_timer + 1),
                expired.eq(idle_timer == self.byte_timeout - 1),
            ]

        def idle():
            """After a `with m.If(got)` block: give up on the frame after byte_timeout quiet
            cycles."""
            with m.Elif(expired):
                fsm.next("SYNC")

        fsm = OneHotFSM(m, "SYNC", "parser")  # one-hot: see OneHotFSM
        with fsm.state("SYNC"):
            m.d.sync += crc.eq(0xFFFF)
            with m.If(got & (byte == P.SYNC) & ~busy):
                fsm.next("CMD")
        for state, nxt in (("CMD", "LEN0"), ("LEN0", "LEN1"), ("LEN1", None)):
            with fsm.state(state):
                with m.If(got):
                    m.d.sync += crc.eq(rx_next_crc)
                    if state == "CMD":
                        m.d.sync += cmd.eq(byte)
                        fsm.next(nxt)
                    elif state == "LEN0":
                        m.d.sync += length.eq(byte)
                        fsm.next(nxt)
                    else:
                        m.d.sync += [length[8:].eq(byte), count.eq(0)]
                        m.d.sync += [
                            len_m2.eq(Cat(length[:8], byte) - 2),
                            pay_last.eq(Cat(length[:8], byte) == 1),
                            wr_ok.eq((cmd == P.WRITE_INPUT) & (in_bytes > 0)),
                        ]
                        with m.If(Cat(length[:8], byte) == 0):
                            fsm.next("CRC0")
                        with m.Else():
                            fsm.next("PAYLOAD")
                idle()
        with fsm.state("PAYLOAD"):
            with m.If(got):
                m.d.sync += [
                    crc.eq(rx_next_crc),
                    count.eq(count + 1),
                    cfg_rec.eq(Cat(cfg_rec[8:], byte)),
                    pay_last.eq(count == len_m2),
                    wr_ok.eq((cmd == P.WRITE_INPUT) & (count < in_bytes - 1)),
                ]
                with m.If(wr_ok):
                    m.d.comb += [in_wr.addr.eq(count), in_wr.data.eq(byte), in_wr.en.eq(1)]
                with m.If(pay_last):
                    fsm.next("CRC0")
            idle()
        with fsm.state("CRC0"):
            with m.If(got):
                m.d.sync += rx_crc[8:].eq(byte)
                fsm.next("CRC1")
            idle()
        with fsm.state("CRC1"):
            with m.If(got):
                m.d.sync += rx_crc[:8].eq(byte)
                fsm.next("CHECK")
            idle()
        # the frame's checks, registered for DECIDE (off the reply logic's path). `cmd` and
        # `length` hold still from LEN1 on, and CHECK comes 3 cycles or more after LEN1 (two
        # CRC bytes), so their flags are registered every cycle and the length check in CHECK
        crc_ok, len_0, len_in, len_8 = Signal(), Signal(), Signal(), Signal()
        commands = ("IDENT", "WRITE_INPUT", "RUN", "READ_OUTPUT", "CFG_WRITE")
        is_cmd = {c: Signal(name=f"is_{c.lower()}") for c in commands}  # cmd, decoded
        known, len_bad = Signal(), Signal()  # a command we know; its length is wrong
        m.d.sync += [len_0.eq(length == 0), len_in.eq(length == in_bytes), len_8.eq(length == 8)]
        m.d.sync += [is_cmd[c].eq(cmd == getattr(P, c)) for c in commands]
        with fsm.state("CHECK"):
            m.d.sync += [
                crc_ok.eq(rx_crc == crc),
                known.eq(Cat(*is_cmd.values()).any()),
                len_bad.eq(
                    ((is_cmd["IDENT"] | is_cmd["READ_OUTPUT"] | is_cmd["RUN"]) & ~len_0)
                    | (is_cmd["WRITE_INPUT"] & ~len_in)
                    | (is_cmd["CFG_WRITE"] & ~len_8)
                ),
            ]
            fsm.next("DECIDE")
        # the reply, decided from those flags (registered), then set up in EXEC: a NAK for a
        # bad CRC, an unknown command, a wrong length or a RUN without input, in that order
        nak_r, code_r, ok_run, ok_cfg = Signal(), Signal(8), Signal(), Signal()
        with fsm.state("DECIDE"):
            fsm.next("EXEC")
            no_input = is_cmd["RUN"] & ~have_input
            m.d.sync += [
                nak_r.eq(~crc_ok | ~known | len_bad | no_input),
                code_r.eq(
                    Mux(
                        ~crc_ok,
                        P.ERR_CRC,
                        Mux(~known, P.ERR_CMD, Mux(len_bad, P.ERR_LENGTH, P.ERR_NO_INPUT)),
                    )
                ),
                ok_run.eq(crc_ok & is_cmd["RUN"] & ~len_bad & have_input),
                ok_cfg.eq(crc_ok & is_cmd["CFG_WRITE"] & ~len_bad),
            ]
            with m.If(crc_ok & is_cmd["WRITE_INPUT"]):
                m.d.sync += have_input.eq(~len_bad)
        with fsm.state("EXEC"):
            fsm.next("REPLY")
            with m.If(nak_r):
                m.d.sync += [r_cmd.eq(P.NAK), r_len.eq(2), r_code.eq(code_r), r_ocmd.eq(cmd)]
            with m.Else():
                ack_len = Mux(
                    is_cmd["IDENT"], len(self.ident), Mux(is_cmd["READ_OUTPUT"], out_bytes + 4, 0)
                )
                m.d.sync += [r_cmd.eq(cmd | P.REPLY), r_len.eq(ack_len)]
            with m.If(ok_run):
                fsm.next("RUN_FEED")
            with m.If(ok_cfg):
                m.d.comb += [
                    self.cfg.addr.eq(cfg_rec[:32]),
                    self.cfg.data.eq(cfg_rec[32:]),
                    self.cfg.en.eq(1),
                ]

        # ---- RUN: stream the input buffer into the engine, collect its output
        # the stream handshakes come from flip-flops: `feeding` is FEED_SEND, `collecting`
        # COLLECT; the input buffer is read at `count` (and holds its word in FEED_SEND)
        k = Signal(16)
        feed_last, k_open = Signal(), Signal()  # count == in_bytes, k < out_bytes
        feeding, collecting = Signal(), Signal()
        m.d.comb += [in_rd.addr.eq(count), in_rd.en.eq(~feeding)]
        m.d.comb += [self.i.valid.eq(feeding), self.o.ready.eq(collecting & k_open)]
        with fsm.state("RUN_FEED"):
            m.d.sync += [count.eq(0), k.eq(0), k_open.eq(out_bytes > 0)]
            fsm.next("FEED_READ")
        with fsm.state("FEED_READ"):
            m.d.sync += count.eq(count + 1)
            if vb == 1:
                m.d.sync += [feed_last.eq(count == in_bytes - 1), feeding.eq(1)]
            fsm.next("FEED_SEND" if vb == 1 else "FEED_READ_HI")
        if vb == 2:
            lo = Signal(8)
            with fsm.state("FEED_READ_HI"):
                m.d.sync += [lo.eq(in_rd.data), count.eq(count + 1)]
                m.d.sync += [feed_last.eq(count == in_bytes - 1), feeding.eq(1)]
                fsm.next("FEED_SEND")
        with fsm.state("FEED_SEND"):
            value = in_rd.data if vb == 1 else Cat(lo, in_rd.data)
            m.d.comb += self.i.payload.eq(value)
            with m.If(self.i.ready):
                m.d.sync += feeding.eq(0)
                with m.If(feed_last):
                    m.d.sync += [count.eq(0), collecting.eq(1)]
                    fsm.next("COLLECT")
                with m.Else():
                    fsm.next("FEED_READ")
        taken = self.o.valid & self.o.ready  # (its writes follow the FSM)
        with fsm.state("COLLECT"):
            with m.If(taken):
                if vb == 2:
                    m.d.sync += [count.eq(self.o.payload[8:]), collecting.eq(0)]
                    fsm.next("COLLECT_HI")
            with m.If(~k_open):
                m.d.sync += [cycles_l.eq(self.cycles), collecting.eq(0)]
                fsm.next("REPLY")
        if vb == 2:
            with fsm.state("COLLECT_HI"):
                m.d.comb += [out_wr.addr.eq(k - 1), out_wr.data.eq(count[:8]), out_wr.en.eq(1)]
                m.d.sync += collecting.eq(1)
                fsm.next("COLLECT")
        with fsm.state("REPLY"):
            m.d.comb += send.eq(1)
            fsm.next("WAIT_SENT")
        with fsm.state("WAIT_SENT"):
            with m.If(~busy):
                fsm.next("SYNC")

        with m.If(taken):
            m.d.comb += [out_wr.addr.eq(k), out_wr.data.eq(self.o.payload[:8]), out_wr.en.eq(1)]
            m.d.sync += [k.eq(k + vb), k_open.eq(k < out_bytes - vb)]

        # ---- sender: SYNC, cmd, len (2), payload, CRC (2). Each byte takes phases 1 (the
        # output buffer reads it; what `pos` is, registered), 2 (the byte unless it is the
        # output buffer's, registered), 3 (the byte, registered: the CRC starts from a
        # register) and 4 (presented until taken)
        max_len = max(len(self.ident), out_bytes + 4, 2)
        pos, pay = Signal(range(max_len + 7)), Signal(range(-4, max_len + 3))  # pay = pos - 4
        pay_end, last_pos, tcrc = Signal.like(pos), Signal.like(pos), Signal(16)
        ident = Array(Const(b, 8) for b in self.ident)
        cyc_bytes = Array(cycles_l.word_select(i, 8) for i in range(4))
        m.d.comb += out_rd.addr.eq(pay[: len(out_rd.addr)])
        in_hdr, in_pay, at_crc_hi, in_out, crc_en, final = (Signal() for _ in range(6))
        is_nak, is_ident, is_read = Signal(), Signal(), Signal()  # r_cmd, decoded
        m.d.sync += [
            is_nak.eq(r_cmd == P.NAK),
            is_ident.eq(r_cmd == (P.IDENT | P.REPLY)),
            is_read.eq(r_cmd == (P.READ_OUTPUT | P.REPLY)),
        ]
        header = Array([Const(P.SYNC, 8), r_cmd, r_len[:8], r_len[8:]])
        phase = Signal(range(5))  # 0 idle, 1 fetch (memory latency), 2-3 select, 4 present
        other, other_r, byte_r, use_mem = Signal(8), Signal(8), Signal(8), Signal()
        # the candidate bytes, registered every cycle: `pos` and `pay` hold still from phase 1
        # to phase 4, so in phase 2 these are pos's bytes (the lookups off the select's path)
        hdr_b, nak_b, ident_b, cyc_b = (
            Signal(8, name=n) for n in ("hdr_b", "nak_b", "ident_b", "cyc_b")
        )
        m.d.sync += [
            hdr_b.eq(header[pos[:2]]),
            nak_b.eq(Mux(pay == 0, r_code, r_ocmd)),
            ident_b.eq(ident[pay[:5]]),
            cyc_b.eq(cyc_bytes[(pay[:2] - out_bytes)[:2]]),
        ]
        with m.If(in_hdr):
            m.d.comb += other.eq(hdr_b)
        with m.Elif(in_pay):
            with m.If(is_nak):
                m.d.comb += other.eq(nak_b)
            with m.Elif(is_ident):
                m.d.comb += other.eq(ident_b)
            with m.Elif(is_read):
                m.d.comb += other.eq(cyc_b)
        with m.Elif(at_crc_hi):
            m.d.comb += other.eq(tcrc[8:])
        with m.Else():
            m.d.comb += other.eq(tcrc[:8])
        # busy = (phase != 0), kept in a flip-flop of its own (set on send, cleared with phase)
        tx_next_crc = crc16_step(m, tcrc, byte_r, "txcrc")
        with m.If(send):
            m.d.sync += [phase.eq(1), busy.eq(1), pos.eq(0), pay.eq(-4), tcrc.eq(0xFFFF)]
            m.d.sync += [pay_end.eq(r_len + 4), last_pos.eq(r_len + 5)]
        with m.Elif(phase == 1):  # give the output buffer a cycle to read pos's byte
            m.d.sync += [
                phase.eq(2),
                in_hdr.eq(pos < 4),
                in_pay.eq(pos < pay_end),
                at_crc_hi.eq(pos == pay_end),
                in_out.eq(pay < out_bytes),
                crc_en.eq((pos >= 1) & (pos < pay_end)),
                final.eq(pos == last_pos),
            ]
        with m.Elif(phase == 2):
            m.d.sync += [other_r.eq(other), phase.eq(3)]
            m.d.sync += use_mem.eq(~in_hdr & in_pay & is_read & in_out)
        with m.Elif(phase == 3):
            m.d.sync += [byte_r.eq(Mux(use_mem, out_rd.data, other_r)), phase.eq(4)]
        with m.Elif(phase == 4):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte_r)]
            with m.If(self.tx.ready):
                with m.If(crc_en):
                    m.d.sync += tcrc.eq(tx_next_crc)
                m.d.sync += [pos.eq(pos + 1), pay.eq(pay + 1)]
                with m.If(final):
                    m.d.sync += [phase.eq(0), busy.eq(0)]
                with m.Else():
                    m.d.sync += phase.eq(1)
        return m
