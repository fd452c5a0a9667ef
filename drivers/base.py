"""The shapes every driver shares: frames, the framer and parser interfaces, the description."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fieldhub.core.records import Record


@dataclass(frozen=True, slots=True)
class Frame:
    """One framed unit off the wire. ``ok`` is False for checksum/framing errors (``error`` says why)."""

    raw: bytes
    ok: bool = True
    error: str = ""
    #: protocol-specific decoded form (e.g. a pymavlink message), if the framer already made one
    message: Any = None
    #: capture time in ns UTC when the source carries one (tlog), else 0
    ts: int = 0


class Framer(Protocol):
    def feed(self, data: bytes) -> list[Frame]:
        """Consume bytes; return every complete frame (good or bad). Never raises on bad input."""
        ...

    def flush(self) -> list[Frame]:
        """End of input: whatever is still buffered, as a frame if it is complete (a last
        sentence without its line end) or as one bad frame; the framer is empty afterwards.
        Nothing a device sent stays unseen and uncounted."""
        ...


@dataclass(frozen=True)
class ParseContext:
    """What a parser may know besides the frame: time is passed in, never read by the parser."""

    device_id: str
    now_ns: int
    tags: Mapping[str, str] = field(default_factory=dict)
    profile: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


class Parser(Protocol):
    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        """Turn one good frame into records (possibly none). Raises ProtocolError if it cannot."""
        ...


@dataclass(frozen=True)
class Driver:
    """The one declared description a driver module exports as ``DRIVER``."""

    name: str
    summary: str
    framer: Callable[[], Framer]
    parser: Callable[[Mapping[str, Any]], Parser]
    #: reads a capture file into byte chunks (default: the file's bytes; tlogs differ)
    read_capture: Callable[[Path], Iterator[bytes]] | None = None
    #: "module:Class" of the simulator, if any
    simulator: str = ""
    #: encodes a command dict into bytes for the device, if the family takes commands
    encoder: Callable[..., bytes] | None = None

    def capture_chunks(self, path: Path) -> Iterator[bytes]:
        if self.read_capture is not None:
            yield from self.read_capture(path)
            return
        yield from read_raw_capture(path)


def read_raw_capture(path: Path) -> Iterator[bytes]:
    """A binary capture file in 64 KiB chunks."""
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            yield chunk


def read_hex_capture(path: Path) -> Iterator[bytes]:
    """Vector files (``#`` comments, then ``column | ... | hex bytes`` rows: one frame per row)
    as bytes; any other file is read as a raw binary capture."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not (head.startswith(b"#") or b" | " in head):
        yield from read_raw_capture(path)
        return
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"#") or b"|" not in line:
                continue
            try:
                yield bytes.fromhex(line.rsplit(b"|", 1)[1].decode("ascii"))
            except ValueError:
                continue
