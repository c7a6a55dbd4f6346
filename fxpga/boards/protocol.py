"""The host ↔ board protocol: framing, CRC, commands. Sans-IO core plus a serial ``Link``.

Frame (both directions)::

    0xA5 | cmd (1) | length (2, little-endian) | payload (length) | CRC-16 (2, big-endian)

The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over cmd, length and payload. A
receiver skips bytes until 0xA5, so it resynchronises after garbage; the board also drops a
frame that stalls mid-way (``BYTE_TIMEOUT``), so a truncated frame cannot wedge it. Replies
carry ``cmd | 0x80``; errors are ``NAK`` frames with ``(code, cmd)``.

Commands:
- ``IDENT``: reply = ``b"FXPG"``, version, lanes, data_bits, weight_bits, acc_bits,
  post_lanes, in_size (2), out_size (2), model hash (8). The host refuses to run a model whose
  hash differs (``model_hash``).
- ``WRITE_INPUT``: payload = ``in_size`` values, one byte each (two, little-endian, when
  data_bits > 8), in the engine's (HWC) order. Reply: empty.
- ``RUN``: streams the input through the engine, collects the output. Reply: empty, after
  the inference.
- ``READ_OUTPUT``: reply = ``out_size`` values (as above), then the cycle count (4, LE).
- ``CFG_WRITE``: payload = address (4, LE), data (4, LE): one write on the engine's
  configuration port (programs and weights at run time). Reply: empty.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

from ..errors import FxpgaError
from ..limits import MAX_TIMEOUT_S, MIN_TIMEOUT_S, check_range

SYNC = 0xA5
IDENT, WRITE_INPUT, RUN, READ_OUTPUT, CFG_WRITE = 0x01, 0x02, 0x03, 0x04, 0x05
NAK = 0x7F
REPLY = 0x80
ERR_CRC, ERR_CMD, ERR_LENGTH, ERR_NO_INPUT = 1, 2, 3, 4
ERRORS = {
    ERR_CRC: "bad CRC",
    ERR_CMD: "unknown command",
    ERR_LENGTH: "bad length",
    ERR_NO_INPUT: "no input written",
}
MAGIC = b"FXPG"
VERSION = 1
MAX_PAYLOAD = 4096  # the longest reply the host accepts (a READ_OUTPUT: outputs + cycles)
MAX_FRAME = 0xFFFF  # a frame's length field is 16 bits (a WRITE_INPUT: the input)
MAX_IDENT_BYTE = 0xFF  # IDENT carries lanes and post_lanes in a byte each


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (check value for b"123456789" is 0x29B1)."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(cmd: int, payload: bytes = b"") -> bytes:
    body = bytes([cmd]) + struct.pack("<H", len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack(">H", crc16(body))


class Decoder:
    """Feed bytes, get ``(cmd, payload)`` frames; garbage and bad-CRC frames are skipped (and
    counted in ``dropped``)."""

    def __init__(self):
        self.buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        frames = []
        while True:
            start = self.buf.find(SYNC)
            if start < 0:
                self.dropped += len(self.buf)
                self.buf.clear()
                return frames
            if start:
                self.dropped += start
                del self.buf[:start]
            if len(self.buf) < 4:
                return frames
            (length,) = struct.unpack("<H", self.buf[2:4])
            if length > MAX_PAYLOAD:
                del self.buf[:1]
                self.dropped += 1
                continue
            end = 4 + length + 2
            if len(self.buf) < end:
                return frames
            body = bytes(self.buf[1 : 4 + length])
            (crc,) = struct.unpack(">H", self.buf[4 + length : end])
            if crc != crc16(body):
                del self.buf[:1]  # resynchronise on the next SYNC byte
                self.dropped += 1
                continue
            frames.append((body[0], body[3:]))
            del self.buf[:end]


@dataclass(frozen=True)
class Ident:
    version: int
    lanes: int
    data_bits: int
    weight_bits: int
    acc_bits: int
    post_lanes: int
    in_size: int
    out_size: int
    model_hash: bytes

    @property
    def weights_at_runtime(self) -> bool:
        """The board's weights are not in its bitstream (iCE40 SPRAM): load them first."""
        return bool(self.version & 0x80)

    @classmethod
    def parse(cls, payload: bytes) -> Ident:
        if len(payload) != 22 or payload[:4] != MAGIC:
            raise FxpgaError(f"the board's IDENT reply is not an fxpga engine: {payload!r}")
        v, lanes, d, w, a, p, i, o = struct.unpack("<BBBBBBHH", payload[4:14])
        return cls(v, lanes, d, w, a, p, i, o, payload[14:22])

    def pack(self) -> bytes:
        return (
            MAGIC
            + struct.pack(
                "<BBBBBBHH",
                self.version,
                self.lanes,
                self.data_bits,
                self.weight_bits,
                self.acc_bits,
                self.post_lanes,
                self.in_size,
                self.out_size,
            )
            + self.model_hash
        )


def model_hash(prog) -> bytes:
    """8 bytes identifying a compiled program: its descriptors, weights and biases."""
    from ..hw.engine import program_words

    h = hashlib.sha256()
    words = program_words(prog)
    h.update(struct.pack(f"<{len(words)}I", *words))
    for bank in prog.wmem:
        h.update(struct.pack(f"<{len(bank)}q", *bank))
    words = prog.bias_words
    h.update(struct.pack(f"<{len(words)}q", *words))
    return h.digest()[:8]


def value_bytes(data_bits: int) -> int:
    """Bytes per input or output value on the wire: one up to 8 bits, else two."""
    return 1 if data_bits <= 8 else 2


def check_sizes(prog):
    """A one-line error unless ``prog``'s engine fits the protocol: IDENT's fields, its input
    in one WRITE_INPUT frame, its output in one READ_OUTPUT reply."""
    c = prog.config
    vb = value_bytes(c.data_bits)
    if c.lanes > MAX_IDENT_BYTE:
        raise FxpgaError(
            f"a board engine has at most {MAX_IDENT_BYTE} lanes (IDENT carries them in a "
            f"byte), not {c.lanes}"
        )
    if prog.in_size * vb > MAX_FRAME:
        raise FxpgaError(
            f"the model's input, {prog.in_size:,} values of {vb} byte(s), is more than one "
            f"WRITE_INPUT frame carries ({MAX_FRAME:,} bytes)"
        )
    if prog.out_size * vb + 4 > MAX_PAYLOAD:
        raise FxpgaError(
            f"the model's output, {prog.out_size:,} values of {vb} byte(s), is more than one "
            f"READ_OUTPUT reply carries ({MAX_PAYLOAD - 4:,} bytes)"
        )


def ident_for(prog) -> Ident:
    check_sizes(prog)
    c = prog.config
    return Ident(
        VERSION | (0x80 if c.weight_store == "spram" else 0),
        c.lanes,
        c.data_bits,
        c.weight_bits,
        c.acc_bits,
        c.post_lanes,
        prog.in_size,
        prog.out_size,
        model_hash(prog),
    )


def pack_values(values, data_bits: int) -> bytes:
    fmt = "b" if data_bits <= 8 else "h"
    return struct.pack(f"<{len(values)}{fmt}", *(int(v) for v in values))


def unpack_values(payload: bytes, n: int, data_bits: int) -> list[int]:
    fmt = "b" if data_bits <= 8 else "h"
    return list(struct.unpack(f"<{n}{fmt}", payload[: n * struct.calcsize(fmt)]))


def check_reply(cmd: int, reply: tuple[int, bytes]) -> bytes:
    rcmd, payload = reply
    if rcmd == NAK:
        code = payload[0] if payload else 0
        raise FxpgaError(
            f"the board refused command 0x{cmd:02x}: {ERRORS.get(code, f'error {code}')}"
        )
    if rcmd != cmd | REPLY:
        raise FxpgaError(f"unexpected reply 0x{rcmd:02x} to command 0x{cmd:02x}")
    return payload


class Link:
    """Request/response over a byte stream with ``write(bytes)`` and ``read(n)`` (pyserial's
    ``Serial`` with a read timeout). Each request gets one reply or a timeout error; a port
    that fails (``OSError``, pyserial's ``SerialException``: the adapter unplugged) is a
    one-line error naming the port (``name``)."""

    def __init__(self, port, timeout: float = 2.0, retries: int = 2, name: str | None = None):
        check_range("Link timeout (s)", timeout, MIN_TIMEOUT_S, MAX_TIMEOUT_S)
        self.port, self.timeout, self.retries = port, timeout, retries
        self.name = name or str(getattr(port, "port", None) or "the serial port")
        self.decoder = Decoder()

    def _io(self, what: str, call, *args):
        try:
            return call(*args)
        except OSError as e:
            why = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise FxpgaError(
                f"{self.name}: the serial port failed while {what}: {why} (is the adapter "
                f"still plugged in?)"
            ) from e

    def request(self, cmd: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        last = None
        for _ in range(self.retries + 1):
            self._io("writing", self.port.write, encode(cmd, payload))
            try:
                return check_reply(cmd, self._reply(timeout or self.timeout))
            except FxpgaError as e:  # a NAK for a corrupted request is worth one retry
                last = e
                if "bad CRC" not in str(e):
                    raise
        raise last

    def _reply(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames = self.decoder.feed(self._io("reading", self.port.read, 64) or b"")
            if frames:
                return frames[0]
        raise FxpgaError(
            f"no reply from the board within {timeout:.1f} s (is the bitstream "
            f"loaded and the port right?)"
        )

    def identify(self) -> Ident:
        return Ident.parse(self.request(IDENT))

    def infer(self, values, ident: Ident, run_time: float = 0.0) -> tuple[list[int], int]:
        """One inference: the board replies to RUN when it is done, so RUN's reply is awaited
        for the larger of the link's timeout and ``run_time`` (the inference's estimated
        seconds); the output must be ``ident.out_size`` values and the cycle count."""
        self.request(WRITE_INPUT, pack_values(values, ident.data_bits))
        self.request(RUN, timeout=max(self.timeout, run_time))
        reply = self.request(READ_OUTPUT)
        vb = value_bytes(ident.data_bits)
        if len(reply) != ident.out_size * vb + 4:
            raise FxpgaError(
                f"{self.name}: the board's READ_OUTPUT reply has {len(reply)} bytes, expected "
                f"{ident.out_size * vb + 4} ({ident.out_size} outputs of {vb} byte(s), then "
                f"the 4-byte cycle count)"
            )
        out = unpack_values(reply, ident.out_size, ident.data_bits)
        (cycles,) = struct.unpack("<I", reply[-4:])
        return out, cycles

    def load_weights(self, prog, progress=None):
        """Write every lane's weights over CFG_WRITE (for boards with SPRAM weights)."""
        from ..hw.engine import REGION_WEIGHTS

        writes = [
            (REGION_WEIGHTS << 28 | lane << 20 | i, w)
            for lane, bank in enumerate(prog.wmem)
            for i, w in enumerate(bank)
        ]
        for addr, data in progress(writes) if progress else writes:
            self.cfg_write(addr, data)

    def cfg_write(self, addr: int, data: int):
        self.request(CFG_WRITE, struct.pack("<II", addr & 0xFFFFFFFF, data & 0xFFFFFFFF))
