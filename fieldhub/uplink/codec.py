"""The uplink batch format v1: columnar per series, delta-of-delta timestamps, scaled-integer deltas, varints, zstd.

Layout and rationale are documented in ``docs/uplink.md``. ``encode_batch`` and
``decode_batch`` are pure: no I/O, no clocks.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

import orjson
import zstandard

from fieldhub.core.errors import ProtocolError
from fieldhub.core.records import Priority, Record, stable_id

MAGIC = b"FHB"
VERSION = 1
FLAG_ZSTD = 1
# column types
T_INT, T_SCALED, T_FLOAT, T_BOOL, T_STR = 0, 1, 2, 3, 4
# id modes: derived from (source, device, kind, ts); raw 10-byte ids; ids as strings
ID_DERIVED, ID_RAW10, ID_STR = 0, 1, 2
MAX_SCALE = 9
_HEX20 = re.compile(r"^[0-9a-f]{20}$")
_D = struct.Struct("<d")


@dataclass
class Batch:
    """One uplink batch: who sent it, which log ranges it covers, the records, and hub metadata.

    ``ranges`` maps a priority class to ``(after, hi)``: the batch holds every record of that
    class with ``after < seq <= hi`` that the log still had when it was read.
    """

    hub_id: str
    batch_id: int
    sent_ns: int
    ranges: dict[int, tuple[int, int]]
    records: list[Record]
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- varints
def _zz(n: int) -> int:
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def _unzz(n: int) -> int:
    return (n >> 1) if not n & 1 else -((n + 1) >> 1)


def _uv(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class _Reader:
    __slots__ = ("b", "i")

    def __init__(self, b: bytes) -> None:
        self.b, self.i = b, 0

    def uv(self) -> int:
        b, i, shift, n = self.b, self.i, 0, 0
        while True:
            try:
                c = b[i]
            except IndexError:
                raise ProtocolError("truncated batch (varint)", offset=i) from None
            i += 1
            n |= (c & 0x7F) << shift
            if c < 0x80:
                self.i = i
                return n
            shift += 7
            if shift > 70:
                raise ProtocolError("varint too long", offset=i)

    def sv(self) -> int:
        return _unzz(self.uv())

    def svs(self, n: int) -> list[int]:
        """``n`` zigzag varints (the hot loop of decoding)."""
        b, i = self.b, self.i
        out: list[int] = []
        app = out.append
        try:
            for _ in range(n):
                c = b[i]
                i += 1
                if c >= 0x80:
                    v, shift = c & 0x7F, 7
                    while True:
                        c = b[i]
                        i += 1
                        v |= (c & 0x7F) << shift
                        if c < 0x80:
                            break
                        shift += 7
                        if shift > 70:
                            raise ProtocolError("varint too long", offset=i)
                    c = v
                app((c >> 1) ^ -(c & 1))
        except IndexError:
            raise ProtocolError("truncated batch (varint)", offset=i) from None
        self.i = i
        return out

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.b):
            raise ProtocolError("truncated batch", offset=self.i)
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]


# ----------------------------------------------------------------------------- helpers
def _scale_of(values: Sequence[float]) -> int | None:
    """Smallest decimal exponent d with every value == round(v*10^d)/10^d exactly, or None."""
    for d in range(MAX_SCALE + 1):
        m = 10 ** d
        ok = True
        for v in values:
            if v != v or abs(v) * m >= 2 ** 62:
                return None
            if round(v * m) / m != v:
                ok = False
                break
        if ok:
            return d
    return None


def _ts_unit(deltas: Iterable[int]) -> int:
    """Largest power of ten (exponent, at most 9) dividing every timestamp offset."""
    e = 9
    for d in deltas:
        while e and d % (10 ** e):
            e -= 1
        if not e:
            return 0
    return e


def _type_code(v: Any) -> int:
    if isinstance(v, bool):
        return T_BOOL
    if isinstance(v, int):
        return T_INT
    if isinstance(v, float):
        return T_FLOAT
    return T_STR


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.items: list[str] = []

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.items)
            self.items.append(s)
        return i


# ----------------------------------------------------------------------------- encode
def _column_type(values: list) -> int | None:
    """The one type of a column, or None if it mixes types (then the series is split)."""
    t = type(values[0])
    if any(type(v) is not t for v in values):
        return None
    return {bool: T_BOOL, int: T_INT, float: T_FLOAT, str: T_STR}.get(t)


def _series(records: Sequence[Record]) -> list[tuple[tuple, list[Record], list[int]]]:
    """Group records by (kind, device, source, class, tags, field names); type each column."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        key = (r.kind, r.device_id, r.source, int(r.priority), tuple(r.tags.items()), tuple(r.fields))
        g = groups.get(key)
        if g is None:
            groups[key] = [r]
        else:
            g.append(r)
    out: list[tuple[tuple, list[Record], list[int]]] = []
    for key, recs in groups.items():
        types = [_column_type([r.fields[name] for r in recs]) for name in key[5]]
        typed = [t for t in types if t is not None]
        if len(typed) == len(types):
            out.append((key, recs, typed))
            continue
        split: dict[tuple, list[Record]] = {}  # rare: a field changes type within the batch
        for r in recs:
            split.setdefault(tuple(_type_code(v) for v in r.fields.values()), []).append(r)
        for sig, part in split.items():
            out.append((key, part, list(sig)))
    return out


def encode_body(records: Sequence[Record]) -> bytes:
    """The uncompressed columnar body (string table + series)."""
    strings = _Strings()
    cols = bytearray()
    ap = cols.append
    base = min((r.ts for r in records), default=0)
    series = _series(records)
    _uv(cols, len(series))
    for (kind, dev, source, prio, tags, names), recs, types in series:
        recs.sort(key=lambda r: r.ts)
        _uv(cols, strings(kind))
        _uv(cols, strings(dev))
        _uv(cols, strings(source))
        ap(prio)
        _uv(cols, len(tags))
        for k, v in tags:
            _uv(cols, strings(k))
            _uv(cols, strings(v))
        n = len(recs)
        _uv(cols, n)
        # timestamps: unit, first offset, first delta, then delta-of-delta
        offs = [r.ts - base for r in recs]
        e = _ts_unit(offs)
        unit = 10 ** e
        ap(e)
        prev = prev_d = 0
        for i, o in enumerate(offs):
            t = o // unit
            d = t - prev
            z = d if i < 2 else d - prev_d
            z = (z << 1) if z >= 0 else ((-z << 1) - 1)
            if z < 0x80:
                ap(z)
            else:
                _uv(cols, z)
            prev, prev_d = t, d
        # ids
        if all(r.id == stable_id(source, dev, kind, r.ts) for r in recs):
            ap(ID_DERIVED)
        elif all(_HEX20.match(r.id) for r in recs):
            ap(ID_RAW10)
            for r in recs:
                cols += bytes.fromhex(r.id)
        else:
            ap(ID_STR)
            for r in recs:
                _uv(cols, strings(r.id))
        # field columns
        _uv(cols, len(names))
        for name, tcode in zip(names, types):
            _uv(cols, strings(name))
            values = [r.fields[name] for r in recs]
            ints: list[int] | None = None
            if tcode == T_FLOAT:
                floats = cast("list[float]", values)  # the column's one type, found by _series
                d = _scale_of(floats)
                if d is not None:
                    ap(T_SCALED)
                    ap(d)
                    m = 10 ** d
                    ints = [round(v * m) for v in floats]
                else:
                    ap(T_FLOAT)
                    for v in floats:
                        cols += _D.pack(v)
            elif tcode == T_INT:
                ap(T_INT)
                ints = cast("list[int]", values)
            elif tcode == T_BOOL:
                ap(T_BOOL)
                cols += bytes(1 if v else 0 for v in values)
            else:
                ap(T_STR)
                for v in values:
                    _uv(cols, strings(str(v)))
            if ints is not None:
                prev = 0
                for k in ints:
                    z = k - prev
                    z = (z << 1) if z >= 0 else ((-z << 1) - 1)
                    if z < 0x80:
                        ap(z)
                    else:
                        _uv(cols, z)
                    prev = k
    out = bytearray()
    _uv(out, len(strings.items))
    for s in strings.items:
        raw = s.encode("utf-8", "surrogatepass")
        _uv(out, len(raw))
        out += raw
    _uv(out, _zz(base))
    out += cols
    return bytes(out)


def encode_batch(batch: Batch, *, level: int = 9, compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    """Frame a batch: uncompressed header (hub, batch id, ranges, meta), then the zstd body."""
    head = bytearray(MAGIC)
    head.append(VERSION)
    head.append(FLAG_ZSTD)
    hub = batch.hub_id.encode()
    _uv(head, len(hub))
    head += hub
    _uv(head, batch.batch_id)
    _uv(head, batch.sent_ns)
    _uv(head, len(batch.ranges))
    for prio, (after, hi) in sorted(batch.ranges.items()):
        head.append(prio)
        _uv(head, after)
        _uv(head, hi)
    meta = orjson.dumps(batch.meta) if batch.meta else b""
    _uv(head, len(meta))
    head += meta
    _uv(head, len(batch.records))
    body = encode_body(batch.records)
    comp = compressor or zstandard.ZstdCompressor(level=level)
    return bytes(head) + comp.compress(body)


# ----------------------------------------------------------------------------- decode
#: what a damaged or hostile batch can make Python raise while it is decoded; all of it is a ProtocolError
_DECODE_ERRORS = (ValueError, UnicodeDecodeError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
                  RecursionError, struct.error, orjson.JSONDecodeError)
_I64 = (-(1 << 63), (1 << 63) - 1)


def decode_header(data: bytes) -> tuple[Batch, int]:
    """The batch frame without the records, and where the body starts; ProtocolError when damaged."""
    try:
        return _decode_header(data)
    except ProtocolError:
        raise
    except _DECODE_ERRORS as exc:
        raise ProtocolError(f"bad batch header: {type(exc).__name__}: {exc}") from None


def _decode_header(data: bytes) -> tuple[Batch, int]:
    if len(data) < 5 or data[:3] != MAGIC:
        raise ProtocolError("not an uplink batch (bad magic)")
    if data[3] != VERSION:
        raise ProtocolError(f"uplink batch version {data[3]} not supported (this side speaks {VERSION})")
    rd = _Reader(data)
    rd.i = 5
    hub = rd.take(rd.uv()).decode("utf-8", "replace")
    batch_id = rd.uv()
    sent = rd.uv()
    ranges = {}
    for _ in range(rd.uv()):
        prio = rd.byte()
        ranges[prio] = (rd.uv(), rd.uv())
    mlen = rd.uv()
    meta = orjson.loads(rd.take(mlen)) if mlen else {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"batch meta is a {type(meta).__name__}, not an object")
    for prio, (after, hi) in ranges.items():
        if prio >= len(Priority) or not 0 <= after <= hi <= _I64[1]:
            raise ProtocolError(f"bad range {after}..{hi} for class {prio}")
    count = rd.uv()
    b = Batch(hub, batch_id, sent, ranges, [], meta)
    b.meta.setdefault("_count", count)
    return b, rd.i


def decode_batch(data: bytes, *, max_body: int = 64 * 1024 * 1024) -> Batch:
    """Parse a framed batch back into records (exact round trip of ``encode_batch``).

    Whatever the bytes, the only error is ``ProtocolError``, and what decodes can be stored:
    integers and timestamps fit 64 bits, floats are numbers, strings are valid text."""
    batch, at = decode_header(data)
    count = batch.meta.pop("_count")
    flags = data[4]
    body = data[at:]
    if flags & FLAG_ZSTD:
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_body)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"batch body does not decompress: {exc}") from None
    try:
        batch.records = decode_body(body)
    except ProtocolError:
        raise
    except _DECODE_ERRORS as exc:
        raise ProtocolError(f"bad batch body: {type(exc).__name__}: {exc}") from None
    if len(batch.records) != count:
        raise ProtocolError(f"batch says {count} records, body holds {len(batch.records)}")
    return batch


def decode_body(body: bytes) -> list[Record]:
    rd = _Reader(body)
    strings = [rd.take(rd.uv()).decode("utf-8") for _ in range(rd.uv())]

    def s() -> str:
        i = rd.uv()
        if i >= len(strings):
            raise ProtocolError("string index out of range", offset=rd.i)
        return strings[i]

    base = rd.sv()
    out: list[Record] = []
    for _ in range(rd.uv()):
        kind, dev, source = s(), s(), s()
        prio = Priority(rd.byte())
        tags = {}
        for _t in range(rd.uv()):
            k = s()
            tags[k] = s()
        n = rd.uv()
        unit = 10 ** rd.byte()
        ts: list[int] = []
        prev = prev_d = 0
        for i, v in enumerate(rd.svs(n)):
            d = v if i < 2 else prev_d + v
            prev += d
            prev_d = d
            ts.append(base + prev * unit)
        mode = rd.byte()
        if mode == ID_DERIVED:
            ids = [stable_id(source, dev, kind, t) for t in ts]
        elif mode == ID_RAW10:
            ids = [rd.take(10).hex() for _ in range(n)]
        elif mode == ID_STR:
            ids = [s() for _ in range(n)]
        else:
            raise ProtocolError(f"unknown id mode {mode}", offset=rd.i)
        columns: list[tuple[str, list]] = []
        for _f in range(rd.uv()):
            name = s()
            t = rd.byte()
            if t == T_SCALED:
                m = 10 ** rd.byte()
                vals = [k / m for k in accumulate(rd.svs(n))]
            elif t == T_INT:
                vals = list(accumulate(rd.svs(n)))
                if vals and not (_I64[0] <= min(vals) and max(vals) <= _I64[1]):
                    raise ProtocolError(f"integer column {name!r} beyond 64 bits", offset=rd.i)
            elif t == T_FLOAT:
                vals = [_D.unpack(rd.take(8))[0] for _i in range(n)]
                if any(v != v for v in vals):
                    raise ProtocolError(f"NaN in column {name!r}", offset=rd.i)
            elif t == T_BOOL:
                vals = [bool(rd.byte()) for _i in range(n)]
            elif t == T_STR:
                vals = [s() for _i in range(n)]
            else:
                raise ProtocolError(f"unknown column type {t}", offset=rd.i)
            columns.append((name, vals))
        if ts and not (_I64[0] <= min(ts) and max(ts) <= _I64[1]):
            raise ProtocolError("timestamp out of range", offset=rd.i)
        if not kind or not dev:
            raise ProtocolError("series without kind or device", offset=rd.i)
        names = [c[0] for c in columns]
        rows = zip(*(c[1] for c in columns)) if columns else ((),) * n
        for t_, row, rid in zip(ts, rows, ids):
            out.append(Record(kind, dev, t_, dict(zip(names, row)), dict(tags), prio, source, rid))
    return out
