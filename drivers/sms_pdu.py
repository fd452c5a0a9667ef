"""SMS PDUs (3GPP TS 23.040): SMS-SUBMIT encoding with concatenation, SMS-DELIVER decoding."""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass

from fieldhub.core.errors import ProtocolError, ValidationError

GSM7 = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
        "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_INDEX = {c: i for i, c in enumerate(GSM7)}
#: characters per part: single / concatenated
LIMITS = {"gsm7": (160, 153), "ucs2": (70, 67)}


def is_gsm7(text: str) -> bool:
    return all(c in _GSM7_INDEX and c != "\x1b" for c in text)


def pack7(septets: list[int], fill_bits: int = 0) -> bytes:
    bits, nbits, out = 0, fill_bits, bytearray()
    for s in septets:
        bits |= (s & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        out.append(bits & 0xFF)
    return bytes(out)


def unpack7(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    bits = int.from_bytes(data, "little")
    return [(bits >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def _number(num: str) -> bytes:
    intl = num.startswith("+")
    digits = num.lstrip("+")
    if not digits.isdigit():
        raise ValidationError(f"phone number {num!r} must be digits (optionally +) / 号码须为数字")
    sw = digits + ("F" if len(digits) % 2 else "")
    bcd = bytes(int(sw[i + 1] + sw[i], 16) for i in range(0, len(sw), 2))
    return bytes((len(digits), 0x91 if intl else 0x81)) + bcd


def _read_number(b: bytes, i: int) -> tuple[str, int]:
    ndigits, ton = b[i], b[i + 1]
    nbytes = (ndigits + 1) // 2
    raw = b[i + 2:i + 2 + nbytes]
    if (ton & 0x70) == 0x50:  # alphanumeric sender
        text = "".join(GSM7[s] for s in unpack7(raw, ndigits * 4 // 7))
        return text, i + 2 + nbytes
    digits = "".join(f"{x & 0x0F:X}{x >> 4:X}" for x in raw)[:ndigits]
    return ("+" if (ton & 0x70) == 0x10 else "") + digits, i + 2 + nbytes


def split_text(text: str) -> tuple[str, list[str]]:
    """(coding, parts): one part if it fits, else parts sized for a concatenation header."""
    coding = "gsm7" if is_gsm7(text) else "ucs2"
    single, multi = LIMITS[coding]
    if coding == "ucs2":
        units = text.encode("utf-16-be")
        n = len(units) // 2
        if n <= single:
            return coding, [text]
        parts, cur = [], ""
        for ch in text:  # never split a surrogate pair
            if len((cur + ch).encode("utf-16-be")) // 2 > multi:
                parts.append(cur)
                cur = ""
            cur += ch
        return coding, parts + [cur]
    if len(text) <= single:
        return coding, [text]
    return coding, [text[i:i + multi] for i in range(0, len(text), multi)]



def _user_data(part: str, coding: str, udh: bytes) -> tuple[int, bytes]:
    """TP-UDL and TP-UD of one part: UCS2 octets, or GSM 7-bit septets packed after the UDH."""
    if coding == "ucs2":
        body = udh + part.encode("utf-16-be")
        return len(body), body
    septets = [_GSM7_INDEX[c] for c in part]
    fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
    udl = (len(udh) * 8 + fill) // 7 + len(septets) if udh else len(septets)
    return udl, udh + pack7(septets, fill)

def submit_pdus(number: str, text: str, ref: int | None = None) -> list[str]:
    """Hex SMS-SUBMIT PDUs (no SMSC, so ``AT+CMGS=<len>`` counts from the first TPDU byte)."""
    if not text:
        raise ValidationError("empty message / 短信内容为空")
    coding, parts = split_text(text)
    if len(parts) > 255:
        raise ValidationError("message too long (more than 255 parts)")
    ref = random.randint(0, 255) if ref is None else ref & 0xFF
    out = []
    for idx, part in enumerate(parts, 1):
        udh = bytes((5, 0x00, 3, ref, len(parts), idx)) if len(parts) > 1 else b""
        first = 0x11 | (0x40 if udh else 0)  # SMS-SUBMIT, relative validity period, UDHI
        head = bytes((0x00, first, 0x00)) + _number(number) + bytes((0x00, 0x08 if coding == "ucs2" else 0x00, 0xA7))
        udl, body = _user_data(part, coding, udh)
        out.append((head + bytes((udl,)) + body).hex().upper())
    return out


@dataclass(frozen=True)
class Deliver:
    """A decoded SMS-DELIVER (one part)."""

    sender: str
    text: str
    ts_ns: int
    ref: int = 0
    total: int = 1
    seq: int = 1


def _scts(b: bytes) -> int:
    d = [int(f"{x & 0x0F}{x >> 4}") for x in b[:6]]
    tz_raw = b[6]
    tz_q = int(f"{tz_raw & 0x07}{tz_raw >> 4}") * (-1 if tz_raw & 0x08 else 1)
    secs = calendar.timegm((2000 + d[0], d[1], d[2], d[3], d[4], d[5], 0, 0, 0)) - tz_q * 15 * 60
    return secs * 1_000_000_000


def decode_deliver(pdu_hex: str) -> Deliver:
    """Decode an SMS-DELIVER PDU as ``AT+CMGR`` prints it (with the SMSC prefix)."""
    try:
        b = bytes.fromhex(pdu_hex.strip())
        i = 1 + b[0]  # skip SMSC
        first = b[i]
        if first & 0x03 != 0x00:
            raise ProtocolError(f"not an SMS-DELIVER (first octet {first:02X})")
        sender, i = _read_number(b, i + 1)
        dcs = b[i + 1]
        ts = _scts(b[i + 2:i + 9])
        udl = b[i + 9]
        ud = b[i + 10:]
        ref, total, seq, udh_len = 0, 1, 1, 0
        if first & 0x40:
            udh_len = ud[0] + 1
            j = 1
            while j < udh_len:
                iei, ln = ud[j], ud[j + 1]
                if iei == 0x00:
                    ref, total, seq = ud[j + 2], ud[j + 3], ud[j + 4]
                elif iei == 0x08:
                    ref, total, seq = (ud[j + 2] << 8) | ud[j + 3], ud[j + 4], ud[j + 5]
                j += 2 + ln
        coding = (dcs >> 2) & 0x03
        if coding == 2:
            text = ud[udh_len:udl].decode("utf-16-be", "replace")
        elif coding == 0:
            fill = (7 - (udh_len * 8) % 7) % 7 if udh_len else 0
            nsept = udl - (udh_len * 8 + fill) // 7 if udh_len else udl
            text = "".join(GSM7[s] for s in unpack7(ud[udh_len:], nsept, fill))
        else:
            text = ud[udh_len:udl].hex().upper()
        return Deliver(sender, text, ts, ref, total, seq)
    except (IndexError, ValueError) as exc:
        raise ProtocolError(f"bad SMS PDU: {exc}") from None


def deliver_pdus(sender: str, text: str, ts: tuple[int, ...] = (26, 11, 30, 8, 0, 0), ref: int = 7) -> list[str]:
    """SMS-DELIVER PDUs (what a terminal stores for a received message) — used by the simulator."""
    coding, parts = split_text(text)
    scts = bytes(int(f"{v % 10}{v // 10 % 10}", 16) for v in ts) + b"\x00"
    out = []
    for idx, part in enumerate(parts, 1):
        udh = bytes((5, 0x00, 3, ref & 0xFF, len(parts), idx)) if len(parts) > 1 else b""
        first = 0x04 | (0x40 if udh else 0)
        udl, body = _user_data(part, coding, udh)
        tpdu = bytes((first,)) + _number(sender) + bytes((0x00, 0x08 if coding == "ucs2" else 0x00)) + scts + \
            bytes((udl,)) + body
        out.append(("00" + tpdu.hex()).upper())
    return out


def decode_submit(pdu_hex: str) -> tuple[str, str, int, int, int]:
    """(number, text, ref, total, seq) of an SMS-SUBMIT PDU (simulator side)."""
    try:
        b = bytes.fromhex(pdu_hex.strip())
        i = 1 + b[0]
        first = b[i]
        number, i = _read_number(b, i + 2)
        dcs = b[i + 1]
        vpf = (first >> 3) & 0x03
        i += 2 + (1 if vpf == 2 else 7 if vpf in (1, 3) else 0)
        udl = b[i]
        ud = b[i + 1:]
        ref, total, seq, udh_len = 0, 1, 1, 0
        if first & 0x40:
            udh_len = ud[0] + 1
            if ud[1] == 0x00:
                ref, total, seq = ud[3], ud[4], ud[5]
        if (dcs >> 2) & 0x03 == 2:
            text = ud[udh_len:udl].decode("utf-16-be", "replace")
        else:
            fill = (7 - (udh_len * 8) % 7) % 7 if udh_len else 0
            nsept = udl - (udh_len * 8 + fill) // 7 if udh_len else udl
            text = "".join(GSM7[s] for s in unpack7(ud[udh_len:], nsept, fill))
        return number, text, ref, total, seq
    except (IndexError, ValueError) as exc:
        raise ProtocolError(f"bad SMS-SUBMIT PDU: {exc}") from None
