"""The device registry: who each device is, where it sits in the five administrative levels.

Administrative division codes are the 12-digit 统计用区划代码: a 6-digit county code per
GB/T 2260 (2 province + 2 city + 2 county digits), 3 township digits, 3 village digits.
Trailing zero groups give the level: ``420000000000`` is a province, ``420100000000`` a
city, ``420102000000`` a county, ``420102001000`` a township, ``420102001001`` a village.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.errors import ValidationError

LEVELS = ("province", "city", "county", "township", "village")
LEVEL_ZH = {"province": "省", "city": "市", "county": "县", "township": "乡镇", "village": "村"}

#: GB/T 2260 province-level codes (first two digits).
PROVINCES = {
    "11": "北京", "12": "天津", "13": "河北", "14": "山西", "15": "内蒙古", "21": "辽宁",
    "22": "吉林", "23": "黑龙江", "31": "上海", "32": "江苏", "33": "浙江", "34": "安徽",
    "35": "福建", "36": "江西", "37": "山东", "41": "河南", "42": "湖北", "43": "湖南",
    "44": "广东", "45": "广西", "46": "海南", "50": "重庆", "51": "四川", "52": "贵州",
    "53": "云南", "54": "西藏", "61": "陕西", "62": "甘肃", "63": "青海", "64": "宁夏",
    "65": "新疆", "71": "台湾", "81": "香港", "82": "澳门",
}

#: full matches only (\A..\Z): ``$`` also matches before a trailing newline, and a device id
#: with one corrupts the broker's password and ACL files so Mosquitto refuses to start
_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_KIND_RE = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")


@dataclass(frozen=True, slots=True)
class AdminCode:
    """A validated 12-digit administrative division code."""

    code: str

    @classmethod
    def parse(cls, value: str) -> AdminCode:
        code = str(value).strip()
        if not re.fullmatch(r"[0-9]{12}", code):
            raise ValidationError(
                f"admin code {value!r} must be 12 digits (6-digit GB/T 2260 county code + "
                "3-digit township + 3-digit village) / 区划代码须为12位数字")
        if code[:2] not in PROVINCES:
            raise ValidationError(f"admin code {code}: {code[:2]} is not a GB/T 2260 province code "
                                  f"/ 省级代码 {code[:2]} 不存在")
        groups = [code[2:4], code[4:6], code[6:9], code[9:12]]
        # a zero group may only be followed by zero groups (no village without a township...)
        seen_zero = False
        for name, g in zip(("city", "county", "township", "village"), groups, strict=True):
            if int(g) == 0:
                seen_zero = True
            elif seen_zero:
                raise ValidationError(f"admin code {code}: {name} part {g} given under an empty "
                                      f"higher level / 上级为空时不能有{LEVEL_ZH[name]}级代码")
        return cls(code)

    @property
    def level(self) -> str:
        c = self.code
        if c[2:] == "0" * 10:
            return "province"
        if c[4:] == "0" * 8:
            return "city"
        if c[6:] == "0" * 6:
            return "county"
        if c[9:] == "000":
            return "township"
        return "village"

    @property
    def county(self) -> str:
        return self.code[:6]


@dataclass(frozen=True)
class Device:
    """One registered device."""

    id: str
    kind: str
    admin_code: str
    model: str = ""
    unit: str = ""
    contact: str = ""
    #: transport settings, e.g. {"port": "/dev/ttyUSB0"} or {"endpoint": "udpin:0.0.0.0:14550"}
    transport: dict[str, Any] = field(default_factory=dict)
    created: int = 0

    @property
    def level(self) -> str:
        return AdminCode(self.admin_code).level

    def tags(self) -> dict[str, str]:
        """The tags every record of this device carries downstream."""
        code = AdminCode(self.admin_code)
        return {"kind": self.kind, "model": self.model, "admin_code": self.admin_code,
                "level": code.level, "county": code.county}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level"] = self.level
        return d


CSV_COLUMNS = ("id", "kind", "admin_code", "model", "unit", "contact", "transport")
#: a cell starting with one of these is a formula to Excel, LibreOffice and Sheets
#: (``=HYPERLINK(...)``, ``@SUM(...)``, ``+cmd|...``); the export prefixes it with ``'``
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A free-text cell as exported: a formula-leading one gets a ``'`` (OWASP CSV injection)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_uncell(text: str) -> str:
    """The inverse of ``csv_cell`` on import, so an export re-imports unchanged."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START) else text


def valid_id(device_id: object) -> bool:
    """A device id that is safe in topics, broker files, file names and CSV: 1-64 of [A-Za-z0-9_.-]."""
    return isinstance(device_id, str) and _ID_RE.fullmatch(device_id) is not None


def validate_device(device: Device, known_models: Iterable[str] | None = None) -> Device:
    if not valid_id(device.id):
        raise ValidationError(f"device id {device.id!r}: 1-64 letters, digits, '_', '.', '-'")
    if not _KIND_RE.fullmatch(device.kind or ""):
        raise ValidationError(f"device kind {device.kind!r}: lower-case letters, digits, '_'")
    AdminCode.parse(device.admin_code)
    if device.model and known_models is not None and device.model not in set(known_models):
        raise ValidationError(f"model {device.model!r} is not a firmware profile "
                              "(see `fieldhub profiles list`)")
    return device


class Registry:
    """Devices in ``registry.db`` (SQLite, WAL): the CLI writes it, the hub reads it."""

    def __init__(self, path: Path | str, known_models: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS devices(id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self.known_models = list(known_models) if known_models is not None else None
        self._cache: dict[str, Device] = {}
        self._version: tuple[int, int] | None = None

    def _refresh(self) -> None:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        total = self._db.total_changes
        if (version, total) != self._version:
            self._cache = {row[0]: _device(row[1]) for row in
                           self._db.execute("SELECT id, body FROM devices ORDER BY id")}
            self._version = (version, total)

    def add(self, device: Device, *, replace: bool = False) -> Device:
        validate_device(device, self.known_models)
        if not device.created:
            device = Device(**{**asdict(device), "created": time.time_ns()})
        body = orjson.dumps(asdict(device)).decode()
        if replace:
            self._db.execute("INSERT OR REPLACE INTO devices(id, body) VALUES (?, ?)", (device.id, body))
        else:
            try:
                self._db.execute("INSERT INTO devices(id, body) VALUES (?, ?)", (device.id, body))
            except sqlite3.IntegrityError:
                raise ValidationError(f"device {device.id} already exists "
                                      f"(remove it first, or import with --replace)") from None
        return device

    def remove(self, device_id: str) -> bool:
        return self._db.execute("DELETE FROM devices WHERE id=?", (device_id,)).rowcount > 0

    def get(self, device_id: str) -> Device | None:
        self._refresh()
        return self._cache.get(device_id)

    def all(self) -> list[Device]:
        self._refresh()
        return list(self._cache.values())

    def export_csv(self) -> str:
        """The registry as CSV; free-text cells that a spreadsheet would run as a formula are escaped."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        for d in self.all():
            w.writerow([d.id, d.kind, d.admin_code, csv_cell(d.model), csv_cell(d.unit), csv_cell(d.contact),
                        orjson.dumps(d.transport).decode() if d.transport else ""])
        return buf.getvalue()

    def import_csv(self, text: str | bytes, *, replace: bool = False, source: str = "<csv>") -> int:
        """Import devices; all rows are validated first, so a bad file changes nothing.

        Bytes are decoded as UTF-8 (with or without a BOM) or, failing that, as GB 18030 (what
        a Chinese Excel saves); a file that is neither, or holds NUL bytes, is refused in one line.
        """
        if isinstance(text, bytes):
            text = _csv_text(text, source)
        elif "\x00" in text:
            raise ValidationError(f"{source}: not a CSV text file (NUL bytes) / 不是CSV文本文件")
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise ValidationError(f"{source}: not a readable CSV file ({exc}) / CSV文件无法读取") from None
        missing = {"id", "kind", "admin_code"} - set(fieldnames or ())
        if missing:
            raise ValidationError(f"{source}: missing column(s) {', '.join(sorted(missing))}; "
                                  f"columns are {', '.join(CSV_COLUMNS)}")
        devices: list[Device] = []
        rows = enumerate(reader, start=2)
        while True:
            try:
                lineno, row = next(rows)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ValidationError(f"{source} line {reader.line_num}: {exc} / CSV格式错误") from None
            try:
                transport = orjson.loads(row["transport"]) if row.get("transport") else {}
                if not isinstance(transport, dict):
                    raise ValidationError("transport must be a JSON object")
                dev = Device(id=(row.get("id") or "").strip(), kind=(row.get("kind") or "").strip(),
                             admin_code=(row.get("admin_code") or "").strip(),
                             model=csv_uncell((row.get("model") or "").strip()),
                             unit=csv_uncell(row.get("unit") or ""),
                             contact=csv_uncell(row.get("contact") or ""), transport=transport)
                validate_device(dev, self.known_models)
            except (ValidationError, orjson.JSONDecodeError) as exc:
                raise ValidationError(f"{source} line {lineno}: {exc}") from None
            if not replace and (self.get(dev.id) is not None or dev.id in {d.id for d in devices}):
                raise ValidationError(f"{source} line {lineno}: device {dev.id} already exists "
                                      "(use --replace to overwrite)")
            devices.append(dev)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for dev in devices:
                self.add(dev, replace=True)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(devices)

    def close(self) -> None:
        self._db.close()


def _csv_text(data: bytes, source: str) -> str:
    if b"\x00" in data:
        raise ValidationError(f"{source}: not a CSV text file (binary data at byte {data.index(0)}) "
                              "/ 不是CSV文本文件（含二进制数据）")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        first = exc
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        bad = data[first.start:first.start + 1]
        raise ValidationError(f"{source}: not UTF-8 or GBK text (byte {first.start}: {bad!r}); "
                              "save the CSV as UTF-8 / 文件不是UTF-8或GBK文本，请另存为UTF-8编码的CSV") from None


def _device(body: str) -> Device:
    return Device(**orjson.loads(body))
