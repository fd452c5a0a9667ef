"""Beidou RDSS short-message terminals (protocol 2.1, BD-2 and BD-3 cards): framer, parser, encoder."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext
from .sentence import SentenceFramer, read_text_capture, sentence, split_fields

SOURCE = "serial:beidou_rdss"
#: TXA/TXR encoding field
ENC_CHINESE, ENC_CODE, ENC_MIXED = 0, 1, 2
ENCODINGS = {"chinese": ENC_CHINESE, "gbk": ENC_CHINESE, "code": ENC_CODE, "bcd": ENC_CODE,
             "hex": ENC_CODE, "mixed": ENC_MIXED}
CATEGORIES = {1: "normal", 2: "express", 3: "broadcast", 4: "query", 5: "query"}


def framer() -> SentenceFramer:
    # BD-3 regional messages reach 14,000 bits: 1,750 bytes, ~3,500 as hex
    return SentenceFramer(max_len=4096)


def decode_content(encoding: int, content: bytes) -> tuple[str, str]:
    """(text, hex) of a TXR/TXA content field in one of the three encodings."""
    if encoding == ENC_CHINESE:
        return content.decode("gbk", "replace"), content.hex().upper()
    if encoding == ENC_MIXED:
        body = content[2:] if content[:2].upper() == b"A4" else content
        try:
            raw = bytes.fromhex(body.decode("ascii"))
        except ValueError:
            raise ProtocolError(f"mixed-mode content is not A4+hex: {content[:40]!r}") from None
        return raw.decode("gbk", "replace"), raw.hex().upper()
    # code / BCD: hex digits; show text only when the bytes are printable
    try:
        raw = bytes.fromhex(content.decode("ascii"))
    except ValueError:
        raise ProtocolError(f"code-mode content is not hex: {content[:40]!r}") from None
    text = ""
    if raw and all(32 <= b < 127 for b in raw):
        text = raw.decode("ascii")
    else:
        try:
            text = raw.decode("gbk")
            if not text.isprintable():
                text = ""
        except UnicodeDecodeError:
            text = ""
    return text, raw.hex().upper()


def encode_content(text: str, encoding: int) -> bytes:
    """The TXA content field for ``text``; Chinese mode refuses separators that would break framing."""
    try:
        raw = text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"message has a character GBK cannot carry: {text[exc.start]!r} "
                              "/ 短报文含有无法用GBK编码的字符") from None
    if encoding == ENC_CHINESE:
        if any(c in text for c in ",*$\r\n"):
            raise ValidationError("Chinese mode cannot carry , * $ or line breaks; use --encoding mixed "
                                  "/ 汉字模式不能包含 , * $ 或换行，请用混合模式")
        return raw
    if encoding == ENC_MIXED:
        return b"A4" + raw.hex().upper().encode()
    return raw.hex().upper().encode()


def content_bits(text: str, encoding: int) -> int:
    """Bits the message occupies on the satellite link (what the card's level limits)."""
    raw = text.encode("gbk", "replace")
    if encoding == ENC_CODE:
        return len(raw) * 8  # BCD/code carries the raw bytes
    if encoding == ENC_MIXED:
        return len(raw) * 8 + 8  # the A4 marker byte
    return len(raw) * 8


def encode(command: Mapping[str, Any]) -> bytes:
    """Host sentences: {"cmd": "ica"}, {"cmd": "txa", "dest": "0242286", "text": "...", "encoding": "mixed"},
    {"cmd": "bsi", "period": 10}."""
    cmd = str(command.get("cmd", "")).lower()
    if cmd in ("ica", "card"):
        return sentence("CCICA,0,00")
    if cmd == "icp":
        return sentence("CCICP,0")
    if cmd == "bsi":
        return sentence(f"CCRMO,BSI,2,{int(command.get('period', 10))}")
    if cmd == "txa":
        dest = str(command["dest"])
        if not dest.isdigit() or len(dest) > 7:
            raise ValidationError(f"destination card {dest!r} must be up to 7 digits / 目标卡号须为数字")
        enc = command.get("encoding", ENC_MIXED)
        enc = ENCODINGS[enc] if isinstance(enc, str) else int(enc)
        kind = 0 if command.get("express") else 1
        content = encode_content(str(command["text"]), enc)
        return sentence(b"CCTXA,%s,%d,%d,%s" % (dest.zfill(7).encode(), kind, enc, content))
    raise ValidationError(f"unknown RDSS command {cmd!r}; one of ica, icp, bsi, txa")


def _s(b: bytes) -> str:
    return b.decode("ascii", "replace")


def _int(b: bytes, default: int = 0) -> int:
    try:
        return int(b)
    except ValueError:
        return default


class RdssParser:
    """Pure RDSS parser: $BD sentences from the module and $CC sentences from a host (in captures)."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        self._n = 0

    def _rec(self, kind: str, ctx: ParseContext, fields: dict[str, Any], key: object,
             priority: Priority = Priority.TELEMETRY) -> Record:
        return Record.make(kind, ctx.device_id, ctx.now_ns, fields, tags=ctx.tags, priority=priority,
                           source=ctx.source or SOURCE, key=key)

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        try:
            return self._parse(frame, ctx)
        except (IndexError, ValueError) as exc:
            raise ProtocolError(f"RDSS sentence not understood: {exc}", device=ctx.device_id) from None

    def _parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        f = split_fields(frame.raw)
        addr = _s(f[0])
        stype = addr[2:]
        self._n += 1
        seq = f"{ctx.now_ns}:{self._n}"
        if stype == "ICI" and addr.startswith("BD"):
            return [self._rec("bd_card", ctx, card_info(f), key=f"ICI:{seq}")]
        if stype == "ICP" and addr.startswith("BD"):
            return [self._rec("bd_card", ctx, card_info_bd3(f), key=f"ICP:{seq}")]
        if stype == "TXR":
            return [self._txr(f, ctx)]
        if stype == "FKI":
            return [self._rec("bd_feedback", ctx, feedback(f), key=f"FKI:{seq}")]
        if stype == "BSI":
            return [self._rec("bd_beam", ctx, beams(f), key=f"BSI:{seq}")]
        if stype == "TXA":
            enc = _int(f[3]) if len(f) > 4 else ENC_CODE
            text, hexed = decode_content(enc, f[4] if len(f) > 4 else b"")
            return [self._rec("bd_sent", ctx, {"dest": _s(f[1]), "encoding": enc, "text": text, "hex": hexed},
                              key=f"TXA:{seq}", priority=Priority.COMMAND)]
        return [self._rec("bd_raw", ctx, {"sentence": addr, "raw": _s(frame.raw)}, key=f"RAW:{seq}",
                          priority=Priority.BULK)]

    def _txr(self, f: list[bytes], ctx: ParseContext) -> Record:
        """A received message. Its checksum is good, so a person sent it: content that does not
        decode in its declared encoding (e.g. hex then plain text in mixed mode) is kept raw with
        a ``decode_error`` tag and field, never dropped. A sentence that is not a TXR at all
        (missing fields, unknown encoding) is a ProtocolError, which the port quarantines."""
        if len(f) < 6:
            raise ProtocolError(f"TXR with {len(f) - 1} fields, expected 5", device=ctx.device_id)
        cat, sender, enc, sent = _int(f[1]), _s(f[2]), _int(f[3], -1), _s(f[4])
        content = b",".join(f[5:])  # Chinese-mode text may in theory hold a comma; keep it whole
        if enc not in (ENC_CHINESE, ENC_CODE, ENC_MIXED):
            raise ProtocolError(f"TXR encoding {_s(f[3])!r} is not 0, 1 or 2", device=ctx.device_id)
        tags = ctx.tags
        error = ""
        try:
            text, hexed = decode_content(enc, content)
        except ProtocolError as exc:
            error = str(exc)
            text, hexed = content.decode("gbk", "replace"), content.hex().upper()
            tags = {**ctx.tags, "decode_error": "content"}
        fields: dict[str, Any] = {"sender": sender, "category": CATEGORIES.get(cat, str(cat)),
                                  "encoding": enc, "send_time": sent, "text": text, "hex": hexed}
        if error:
            fields["raw"] = content.decode("gbk", "replace")
            fields["decode_error"] = error
        digest = hashlib.blake2b(content, digest_size=6).hexdigest()
        # the same message seen twice (module repeats) has the same id: sender, time and content
        key = f"TXR:{sender}:{sent}:{digest}" if sent else f"TXR:{sender}:{ctx.now_ns}:{digest}"
        return Record.make("bd_message", ctx.device_id, ctx.now_ns, fields, tags=tags,
                           priority=Priority.COMMAND, source=ctx.source or SOURCE, key=key)


def card_info(f: list[bytes]) -> dict[str, Any]:
    """$BDICI,<card>,<serial>,<broadcast>,<user type>,<interval s>,<level>,<E/N>,<sub-users>."""
    g = [_s(x) for x in f[1:]] + [""] * 8
    card = g[0]
    return {"card": card, "serial": g[1], "broadcast": g[2], "user_type": _int(g[3].encode()),
            "interval_s": _int(g[4].encode()), "comm_level": _int(g[5].encode()),
            "encrypted": g[6] == "E", "sub_users": _int(g[7].encode()),
            "present": bool(card.strip("0")), "generation": "bd2"}


def card_info_bd3(f: list[bytes]) -> dict[str, Any]:
    """$BDICP (BD-3): card, serial, ... field 14 = service interval, field 15 = comm level (BDSDK layout)."""
    g = [_s(x) for x in f[1:]] + [""] * 24
    return {"card": g[0], "serial": g[1], "interval_s": _int(g[13].encode()),
            "comm_level": _int(g[14].encode()), "encrypted": g[5] == "E",
            "present": bool(g[0].strip("0")), "generation": "bd3"}


def feedback(f: list[bytes]) -> dict[str, Any]:
    """BD-2 ``$BDFKI,TXA,Y,Y,0,0040`` or BD-3 ``$BDFKI,hhmmss,TCQ,Y,<reason>,<remaining>``."""
    g = [_s(x) for x in f[1:]] + [""] * 6
    if g[0].isdigit() and len(g[0]) == 6:  # BD-3
        return {"command": g[1], "executed": g[2] == "Y", "interval_ok": g[2] == "Y" or g[3] != "1",
                "reason": g[3], "wait_s": _int(g[4].encode()), "style": "bd3", "time": g[0]}
    return {"command": g[0], "executed": g[1] == "Y", "interval_ok": g[2] == "Y",
            "inhibit": g[3], "reason": g[3], "wait_s": _int(g[4].encode()), "style": "bd2"}


def beams(f: list[bytes]) -> dict[str, Any]:
    """$BDBSI,<response beam>,<time-diff beam>,<p1>..<p10> (power 0-4)."""
    g = [_s(x) for x in f[1:]]
    out: dict[str, Any] = {"resp_beam": _int(g[0].encode()) if g else 0,
                           "tdiff_beam": _int(g[1].encode()) if len(g) > 1 else 0}
    powers = [_int(x.encode()) for x in g[2:12]]
    for i, p in enumerate(powers, 1):
        out[f"p{i}"] = p
    out["max_power"] = max(powers) if powers else 0
    out["usable_beams"] = sum(1 for p in powers if p >= 2)
    return out


def read_capture(path: Any):
    return read_text_capture(path, column=2)


DRIVER = Driver(name="beidou_rdss", summary="Beidou RDSS short-message terminals (BD-2/BD-3, protocol 2.1)",
                framer=framer, parser=RdssParser, read_capture=read_capture,
                simulator="simulators.rdss:RdssSim", encoder=encode)
