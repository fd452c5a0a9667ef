"""NMEA 0183 GNSS receivers (GPS, GLONASS, Galileo, BeiDou BD/GB talkers): framer, parser, transport."""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import Any

from fieldhub.core.records import Priority, Record, stable_id

from .base import Driver, Frame, ParseContext
from .sentence import SentenceFramer, read_text_capture, sentence

SOURCE = "serial:nmea"

#: talker -> constellation; GN = combined; BD (Chinese standard) and GB (NMEA 4.10+) are BeiDou
TALKERS = {"GP": "gps", "GL": "glonass", "GA": "galileo", "BD": "beidou", "GB": "beidou",
           "GN": "gnss", "GI": "navic", "GQ": "qzss", "QZ": "qzss"}
#: NMEA 4.11 system id (last GSA field) -> constellation
SYSTEM_IDS = {"1": "gps", "2": "glonass", "3": "galileo", "4": "beidou", "5": "qzss", "6": "navic"}


def beidou_svid(prn: int) -> int:
    """BeiDou satellite number from a PRN printed either 1-64 (NMEA 4.10+) or 201-264 (older receivers)."""
    return prn - 200 if prn > 200 else prn


def constellation_of_prn(prn: int, talker_sys: str) -> str:
    """Constellation of a PRN in a GSA/GSV of talker system ``talker_sys`` (NMEA 2.3 ranges for GN)."""
    if talker_sys != "gnss":
        return talker_sys
    if 1 <= prn <= 32:
        return "gps"
    if 33 <= prn <= 64:
        return "sbas"
    if 65 <= prn <= 96:
        return "glonass"
    if 201 <= prn <= 264 or 401 <= prn <= 437:
        return "beidou"
    if 301 <= prn <= 336:
        return "galileo"
    return "gnss"


_INF = float("inf")


def _f(b: bytes) -> float | None:
    if not b:
        return None
    try:
        v = float(b)
    except ValueError:
        return None
    return v if v == v and -_INF < v < _INF else None  # no NaN/inf into records


def _i(b: bytes) -> int | None:
    if not b:
        return None
    try:
        return int(b)
    except ValueError:
        try:
            return int(float(b))
        except ValueError:
            return None


def _coord(value: bytes, hemi: bytes) -> float | None:
    """ddmm.mmmm / dddmm.mmmm plus hemisphere -> signed degrees."""
    if not value:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    deg = int(v // 100)
    out = deg + (v - deg * 100) / 60.0
    if hemi in (b"S", b"W"):
        out = -out
    return round(out, 8)


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


class NmeaParser:
    """Pure NMEA parser: one frame -> records. Keeps the last date seen (RMC/ZDA) and GSV groups."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        self._date: tuple[int, int, int] | None = None
        self._gsv_groups: dict[str, list[Any]] = {}
        self._n = 0

    # -- time
    def _ts(self, hhmmss: bytes, ctx: ParseContext) -> int:
        """Fix time on the last date seen (or today's UTC date from ctx) in ns UTC."""
        if not hhmmss or len(hhmmss) < 6:
            return ctx.now_ns
        try:
            hh, mm = int(hhmmss[0:2]), int(hhmmss[2:4])
            ss = float(hhmmss[4:])
        except ValueError:
            return ctx.now_ns
        if self._date is not None:
            y, mo, d = self._date
        else:
            t = time.gmtime(ctx.now_ns / 1e9)
            y, mo, d = t.tm_year, t.tm_mon, t.tm_mday
        try:
            secs = calendar.timegm((y, mo, d, hh, mm, 0, 0, 0, 0))
        except (ValueError, OverflowError):
            return ctx.now_ns
        return secs * 1_000_000_000 + int(round(ss * 1e9))

    def _rec(self, kind: str, ctx: ParseContext, ts: int, fields: dict[str, Any], key: object,
             priority: Priority = Priority.TELEMETRY) -> Record:
        # Built directly rather than through Record.make: every value here is already a clean
        # scalar (numbers pass _f/_i, NaN and inf are refused), and this is the hot path.
        source = ctx.source or SOURCE
        return Record(kind, ctx.device_id, ts, fields, ctx.tags, priority, source,
                      stable_id(source, ctx.device_id, kind, key))

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        raw = frame.raw
        star = raw.rfind(b"*")
        f = (raw[1:star] if star > 0 else raw[1:]).split(b",")
        addr = f[0]
        if len(addr) == 5:
            talker = _TALKER_B.get(addr[:2])
            if talker is not None:
                handler = _HANDLERS_B.get(addr[2:])
                if handler is not None:
                    return handler(self, talker, f, ctx)
        return self._raw(addr.decode("ascii", "replace"), frame, ctx)

    def _raw(self, addr: str, frame: Frame, ctx: ParseContext) -> list[Record]:
        """Vendor and unknown sentences are kept as raw records, not errors."""
        self._n += 1
        text = frame.raw.decode("ascii", "replace")
        return [self._rec("nmea_raw", ctx, ctx.now_ns, {"sentence": addr or "?", "raw": text},
                          key=f"{ctx.now_ns}:{self._n}:{text}", priority=Priority.BULK)]

    def _gga(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 10:
            return []
        ts = self._ts(f[1], ctx)
        q = _i(f[6]) or 0
        fields: dict[str, Any] = {"fix_quality": q, "talker": talker}
        _put(fields, "sats_used", _i(f[7]))
        _put(fields, "hdop", _f(f[8]))
        lat, lon = _coord(f[2], f[3]), _coord(f[4], f[5])
        if q > 0 and lat is not None and lon is not None:
            fields["lat"], fields["lon"] = lat, lon
            _put(fields, "alt_m", _f(f[9]))
            if len(f) > 11:
                _put(fields, "geoid_sep_m", _f(f[11]))
            if len(f) > 13:
                _put(fields, "dgps_age_s", _f(f[13]))
            return [self._rec("position", ctx, ts, fields, key=f"GGA:{talker}:{ts}", priority=Priority.POSITION)]
        return [self._rec("gnss_nofix", ctx, ts, fields, key=f"GGA:{talker}:{ts}")]

    def _gns(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 10:
            return []
        ts = self._ts(f[1], ctx)
        fields: dict[str, Any] = {"mode": f[6].decode("ascii", "replace") or "N", "talker": talker}
        _put(fields, "lat", _coord(f[2], f[3]))
        _put(fields, "lon", _coord(f[4], f[5]))
        _put(fields, "sats_used", _i(f[7]))
        _put(fields, "hdop", _f(f[8]))
        _put(fields, "alt_m", _f(f[9]))
        return [self._rec("gnss_gns", ctx, ts, fields, key=f"GNS:{talker}:{ts}")]

    def _rmc(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 10:
            return []
        d = f[9]
        if len(d) == 6 and d.isdigit():
            yy = int(d[4:6])
            self._date = (2000 + yy if yy < 80 else 1900 + yy, int(d[2:4]), int(d[0:2]))
        ts = self._ts(f[1], ctx)
        status = f[2].decode("ascii", "replace") or "V"
        fields: dict[str, Any] = {"status": status, "valid": status == "A", "talker": talker}
        _put(fields, "lat", _coord(f[3], f[4]))
        _put(fields, "lon", _coord(f[5], f[6]))
        _put(fields, "speed_kn", _f(f[7]))
        _put(fields, "course_deg", _f(f[8]))
        if len(f) > 12 and f[12]:
            fields["mode"] = f[12].decode("ascii", "replace")
        return [self._rec("gnss_rmc", ctx, ts, fields, key=f"RMC:{talker}:{ts}")]

    def _gsa(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 18:
            return []
        system = TALKERS[talker]
        if len(f) > 18 and f[18] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            system = SYSTEM_IDS[f[18].decode()]  # NMEA 4.11; BDGSA's float field 18 is ignored
        prns = [int(x) for x in f[3:15] if x.isdigit()]
        if system == "beidou":
            prns = [beidou_svid(p) for p in prns]
        fields: dict[str, Any] = {"mode": f[1].decode("ascii", "replace") or "A",
                                  "fix_type": _i(f[2]) or 1, "system": system,
                                  "sats_used": len(prns), "prns": ",".join(map(str, prns)), "talker": talker}
        _put(fields, "pdop", _f(f[15]))
        _put(fields, "hdop", _f(f[16]))
        _put(fields, "vdop", _f(f[17].split(b"*")[0]))
        self._n += 1
        return [self._rec("gnss_dop", ctx, ctx.now_ns, fields, key=f"GSA:{ctx.now_ns}:{self._n}")]

    def _gsv(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 4:
            return []
        total, num, in_view = _i(f[1]) or 1, _i(f[2]) or 1, _i(f[3]) or 0
        sats = self._gsv_groups.setdefault(talker, [])
        if num == 1 or len(sats) > 64:  # a new group, or a group that never completes: bounded
            sats.clear()
        body = f[4:]
        signal = ""
        if len(body) % 4 == 1:  # NMEA 4.10+: trailing signal id
            signal = body[-1].decode("ascii", "replace")
            body = body[:-1]
        for i in range(0, len(body) - 3, 4):
            if body[i]:
                sats.append((body[i], body[i + 3]))  # PRN and SNR; converted once the group is complete
        if num < total:
            return []
        system = TALKERS[talker]
        snrs = [int(s[1]) for s in sats if s[1].isdigit() and s[1] != b"00"]
        if system == "beidou":
            ids = [beidou_svid(int(s[0])) for s in sats if s[0].isdigit()]
        else:
            ids = [int(s[0]) for s in sats if s[0].isdigit()]
        fields: dict[str, Any] = {"constellation": system, "in_view": in_view, "tracked": len(snrs),
                                  "prns": ",".join(map(str, ids)), "talker": talker}
        if snrs:
            fields["snr_mean"] = round(sum(snrs) / len(snrs), 1)
            fields["snr_max"] = max(snrs)
        if signal:
            fields["signal_id"] = signal
        self._n += 1
        sats.clear()
        return [self._rec("gnss_sky", ctx, ctx.now_ns, fields, key=f"GSV:{talker}:{ctx.now_ns}:{self._n}")]

    def _vtg(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 8:
            return []
        fields: dict[str, Any] = {"talker": talker}
        _put(fields, "course_deg", _f(f[1]))
        _put(fields, "course_mag_deg", _f(f[3]))
        _put(fields, "speed_kn", _f(f[5]))
        _put(fields, "speed_kmh", _f(f[7]))
        self._n += 1
        return [self._rec("gnss_vtg", ctx, ctx.now_ns, fields, key=f"VTG:{ctx.now_ns}:{self._n}")]

    def _zda(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 5:
            return []
        d, m, y = _i(f[2]), _i(f[3]), _i(f[4])
        if not (d and m and y):
            return []
        self._date = (y, m, d)
        ts = self._ts(f[1], ctx)
        return [self._rec("gnss_time", ctx, ts, {"utc_ns": ts, "skew_ms": round((ctx.now_ns - ts) / 1e6, 1),
                                                 "talker": talker}, key=f"ZDA:{talker}:{ts}")]

    def _gll(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 7:
            return []
        ts = self._ts(f[5], ctx)
        fields: dict[str, Any] = {"status": f[6].decode("ascii", "replace") or "V", "talker": talker}
        _put(fields, "lat", _coord(f[1], f[2]))
        _put(fields, "lon", _coord(f[3], f[4]))
        return [self._rec("gnss_gll", ctx, ts, fields, key=f"GLL:{talker}:{ts}")]

    def _gst(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        if len(f) < 9:
            return []
        ts = self._ts(f[1], ctx)
        fields: dict[str, Any] = {"talker": talker}
        _put(fields, "rms", _f(f[2]))
        _put(fields, "lat_err_m", _f(f[6]))
        _put(fields, "lon_err_m", _f(f[7]))
        _put(fields, "alt_err_m", _f(f[8]))
        return [self._rec("gnss_gst", ctx, ts, fields, key=f"GST:{talker}:{ts}")]

    def _txt(self, talker: str, f: list[bytes], ctx: ParseContext) -> list[Record]:
        text = b",".join(f[4:]).decode("ascii", "replace") if len(f) > 4 else ""
        self._n += 1
        return [self._rec("gnss_text", ctx, ctx.now_ns, {"text": text or "-", "talker": talker},
                          key=f"TXT:{ctx.now_ns}:{self._n}", priority=Priority.BULK)]


_TALKER_B = {k.encode(): k for k in TALKERS}
_HANDLERS = {"GGA": NmeaParser._gga, "GNS": NmeaParser._gns, "RMC": NmeaParser._rmc,
             "GSA": NmeaParser._gsa, "GSV": NmeaParser._gsv, "VTG": NmeaParser._vtg,
             "ZDA": NmeaParser._zda, "GLL": NmeaParser._gll, "GST": NmeaParser._gst,
             "TXT": NmeaParser._txt}
_HANDLERS_B = {k.encode(): v for k, v in _HANDLERS.items()}


def framer() -> SentenceFramer:
    return SentenceFramer(max_len=256)


def encode(command: Mapping[str, Any]) -> bytes:
    """A configuration sentence for the receiver: {"sentence": "PCAS03,1,0,0,0,1,0,0,0"}."""
    return sentence(str(command["sentence"]))


DRIVER = Driver(name="nmea", summary="NMEA 0183 GNSS receivers (GP/GL/GA/BD/GB/GN talkers)",
                framer=framer, parser=NmeaParser, read_capture=read_text_capture,
                simulator="simulators.gnss:GnssSim", encoder=encode)
