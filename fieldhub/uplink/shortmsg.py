"""Beidou short-message encoding of one record (an alarm or a position summary), with a MAC.

Layout v1 (all big-endian; documented in ``docs/uplink.md``)::

    0     version<<4 | type (1 = record summary)
    1     flags: bit0 position present, bit1 fields truncated, bits4-7 priority class
    2-11  record id (10 bytes; the center deduplicates by it)
    12-17 time: uint32 seconds + uint16 milliseconds since the Unix epoch (UTC)
    [18-27 lat int32 1e-7 deg, lon int32 1e-7 deg, alt int16 m]   if bit0
    hub id, kind, device id: varint length + UTF-8 each
    CBOR map of the other fields, as many as fit in order
    last 8: HMAC-SHA256(key, "FHSM" + everything before), truncated
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import cbor2

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record

VERSION, TYPE_RECORD = 1, 1
MAC_LEN = 8
#: message size in bits per Beidou-2 civilian card level (1-4); level 3 ~ 78 bytes
CARD_BITS = {1: 110, 2: 408, 3: 628, 4: 848}
POSITION_FIELDS = ("lat", "lon", "alt_m")


def budget_bytes(card_level: int) -> int:
    """Whole bytes that fit one message for a card level."""
    try:
        return CARD_BITS[card_level] // 8
    except KeyError:
        raise ValidationError(f"unknown Beidou card level {card_level}; one of 1-4") from None


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, b"FHSM" + data, hashlib.sha256).digest()[:MAC_LEN]


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > 127:
        raise ValidationError(f"{s[:20]!r}... too long for a short message")
    return bytes([len(raw)]) + raw


def _number(v: object) -> int | float | None:
    """``v`` if it is a number (not a bool), else None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def encode(record: Record, hub_id: str, key: bytes, budget: int) -> bytes:
    """One short message for ``record``; raises ValidationError if even its header cannot fit."""
    try:
        rid = bytes.fromhex(record.id)
    except ValueError:
        rid = b""
    if len(rid) != 10:
        raise ValidationError(f"record id {record.id!r} is not a 10-byte hex id")
    f = record.fields
    lat, lon = _number(f.get("lat")), _number(f.get("lon"))
    has_pos = lat is not None and lon is not None
    secs, ns = divmod(record.ts, 1_000_000_000)
    head = bytearray([VERSION << 4 | TYPE_RECORD, (int(record.priority) << 4) | int(has_pos)])
    head += rid + struct.pack(">IH", secs & 0xFFFFFFFF, ns // 1_000_000)
    if lat is not None and lon is not None:
        alt_m = _number(f.get("alt_m", 0))
        alt = int(round(alt_m)) if alt_m is not None else 0
        head += struct.pack(">iih", round(lat * 1e7), round(lon * 1e7), max(-32768, min(32767, alt)))
    head += _str(hub_id) + _str(record.kind) + _str(record.device_id)
    room = budget - MAC_LEN - len(head)
    if room < 1:
        raise ValidationError(f"record {record.kind}/{record.device_id} does not fit a {budget}-byte "
                              f"short message even without fields")
    rest = {k: v for k, v in f.items() if not (has_pos and k in POSITION_FIELDS)}
    chosen: dict[str, Any] = {}
    body = cbor2.dumps(chosen)
    for k, v in rest.items():
        trial = cbor2.dumps({**chosen, k: v}, canonical=True)
        if len(trial) <= room:
            chosen[k] = v
            body = trial
    if len(chosen) < len(rest):
        head[1] |= 2
    msg = bytes(head) + body
    return msg + _mac(key, msg)


def decode(data: bytes, key: bytes) -> tuple[str, Record]:
    """(hub id, record) from a short message; ProtocolError if malformed or the MAC is wrong."""
    if len(data) < 18 + MAC_LEN:
        raise ProtocolError(f"short message of {len(data)} bytes is too short")
    msg, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(_mac(key, msg), mac):
        raise ProtocolError("short message MAC does not verify (wrong key or altered)")
    if msg[0] >> 4 != VERSION or msg[0] & 15 != TYPE_RECORD:
        raise ProtocolError(f"short message version/type {msg[0]:#x} not supported")
    flags = msg[1]
    rid = msg[2:12].hex()
    secs, ms = struct.unpack(">IH", msg[12:18])
    i = 18
    fields: dict[str, Any] = {}
    try:
        if flags & 1:
            lat, lon, alt = struct.unpack(">iih", msg[i:i + 10])
            fields.update(lat=lat / 1e7, lon=lon / 1e7, alt_m=alt)
            i += 10
        strs = []
        for _ in range(3):
            n = msg[i]
            strs.append(msg[i + 1:i + 1 + n].decode("utf-8"))
            i += 1 + n
        extra = cbor2.loads(msg[i:]) if i < len(msg) else {}
    except (IndexError, struct.error, UnicodeDecodeError, cbor2.CBORDecodeError) as exc:
        raise ProtocolError(f"malformed short message: {exc}") from None
    if not isinstance(extra, dict):
        raise ProtocolError("malformed short message: fields are not a map")
    fields.update(extra)
    hub_id, kind, device = strs
    tags = {"via": "beidou", "hub": hub_id}
    if flags & 2:
        tags["partial"] = "1"
    rec = Record(kind, device, secs * 1_000_000_000 + ms * 1_000_000, fields, tags,
                 Priority(flags >> 4), "uplink:beidou", rid)
    return hub_id, rec
