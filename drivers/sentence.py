"""NMEA-style sentence framing shared by GNSS receivers and Beidou RDSS terminals ($...*hh CRLF)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import Frame

#: NMEA says 82 bytes; RDSS TXR/TXA with BD-3 messages are much longer, so the cap is a parameter.
DEFAULT_MAX = 1024
_MASKS = {w: (1 << (8 * w)) - 1 for w in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)}


def xor8(data: bytes) -> int:
    """XOR of every byte, folded through one big integer (much faster than a byte loop in Python)."""
    n = len(data)
    if n == 0:
        return 0
    x = int.from_bytes(data, "little")
    w = 1
    while w < n:
        w <<= 1
    while w > 1:
        w >>= 1
        x = (x >> (8 * w)) ^ (x & _MASKS[w])
    return x


def checksum(body: bytes) -> bytes:
    """Two upper-case hex digits of the XOR checksum of ``body`` (the bytes between '$' and '*')."""
    return b"%02X" % xor8(body)


def sentence(body: bytes | str, encoding: str = "ascii") -> bytes:
    """``$body*hh\\r\\n`` with its checksum."""
    raw = body.encode(encoding) if isinstance(body, str) else body
    return b"$" + raw + b"*" + checksum(raw) + b"\r\n"


class SentenceFramer:
    """Incremental ``$...*hh`` framer: resynchronises on '$', checks the checksum, bounds memory.

    Garbage between sentences is skipped and counted (``garbage_bytes``); a line without a
    start, an over-long line, a missing or wrong checksum each come back as a bad frame so
    the caller can count and quarantine it.
    """

    def __init__(self, max_len: int = DEFAULT_MAX, require_checksum: bool = True) -> None:
        self.max_len = max_len
        self.require_checksum = require_checksum
        self._buf = b""
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data if self._buf else data
        out: list[Frame] = []
        lines = buf.split(b"\n")
        rest = lines.pop()
        max_len = self.max_len
        append = out.append
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            # fast path: one clean "$...*hh" sentence on the line
            if line[:1] == b"$" and line[-3:-2] == b"*" and len(line) <= max_len and line.find(b"$", 1) < 0:
                try:
                    want = int(line[-2:], 16)
                except ValueError:
                    want = -1
                if xor8(line[1:-3]) == want:
                    append(Frame(line))
                else:
                    append(Frame(line, ok=False, error="bad checksum"))
            elif line:
                out.extend(self._line(line))
        if len(rest) > max_len:
            # an over-long line with no end: drop it, keep only a possible new start
            dollar = rest.rfind(b"$", 1)
            keep = dollar if dollar > 0 and len(rest) - dollar <= max_len else len(rest)
            append(Frame(bytes(rest[:keep][:120]), ok=False, error=f"line longer than {max_len} bytes"))
            self.garbage_bytes += keep
            rest = rest[keep:]
        self._buf = rest
        return out

    def flush(self) -> list[Frame]:
        """End of input: a last sentence without its line end is still a sentence."""
        rest, self._buf = self._buf, b""
        if rest[-1:] == b"\r":
            rest = rest[:-1]
        return self._line(rest) if rest.strip() else []

    def _line(self, line: bytes) -> list[Frame]:
        dollar = line.find(b"$")
        if dollar < 0:
            dollar = line.find(b"!")  # AIS-style encapsulation uses '!'
        if dollar < 0:
            if line.strip():
                self.garbage_bytes += len(line) + 1
                return [Frame(line[:120], ok=False, error="no sentence start")]
            return []
        if dollar > 0:
            # leading garbage or spaces (one gpsd capture has " $GNRMC"): skip, count, keep the sentence
            junk = line[:dollar]
            if junk.strip():
                self.garbage_bytes += len(junk)
            # a second '$' inside means a sentence was cut by noise: take the last start
        last = line.rfind(b"$")
        if last > dollar:
            self.garbage_bytes += last - dollar
            dollar = last
        s = line[dollar:]
        if len(s) > self.max_len:
            return [Frame(s[:120], ok=False, error=f"sentence longer than {self.max_len} bytes")]
        star = s.rfind(b"*")
        if star < 0 or len(s) - star < 3:
            if self.require_checksum:
                return [Frame(s, ok=False, error="no checksum")]
            return [Frame(s)]
        want = s[star + 1:star + 3]
        if xor8(s[1:star]) != _hex(want):
            return [Frame(s, ok=False, error="bad checksum")]
        return [Frame(s[:star + 3])]


def _hex(two: bytes) -> int:
    try:
        return int(two, 16)
    except ValueError:
        return -1


def split_fields(frame_raw: bytes) -> list[bytes]:
    """Fields of ``$TTSSS,a,b*hh`` as bytes, the first being the address (``GPGGA``)."""
    star = frame_raw.rfind(b"*")
    body = frame_raw[1:star] if star > 0 else frame_raw[1:]
    return body.split(b",")


def read_text_capture(path: Path, column: int | None = None) -> Iterator[bytes]:
    """A text capture as bytes, without ``#`` metadata lines (gpsd logs, our vector files).

    Vector files have ``a | b | sentence | ...`` columns: ``column`` picks the sentence, which
    is sent with CRLF as a device would.
    """
    out: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"#"):
                continue
            if column is not None and b" | " in line:
                cols = line.split(b"|")
                if len(cols) > column:
                    out.append(cols[column].strip() + b"\r\n")
                continue
            out.append(line)
            if len(out) >= 2048:
                yield b"".join(out)
                out.clear()
    if out:
        yield b"".join(out)
