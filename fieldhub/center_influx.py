"""The center's optional InfluxDB 1.x output: line protocol over HTTP ``/write`` (idempotent by series+time)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

from .errors import StorageError
from .records import Record


def _esc(s: str, chars: str = ", =") -> str:
    s = s.replace("\\", "\\\\")
    for c in chars:
        s = s.replace(c, "\\" + c)
    return s


def line(r: Record, hub_id: str) -> str:
    """One line of InfluxDB line protocol for a record (tags: device, hub, record tags)."""
    tags = {"device_id": r.device_id, "hub": hub_id, **r.tags}
    tag_s = ",".join(f"{_esc(k)}={_esc(str(v))}" for k, v in sorted(tags.items()) if v != "")
    fields = []
    for k, v in r.fields.items():
        if isinstance(v, bool):
            fv = "true" if v else "false"
        elif isinstance(v, int):
            fv = f"{v}i"
        elif isinstance(v, float):
            fv = repr(v)
        else:
            fv = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        fields.append(f"{_esc(k)}={fv}")
    return f"{_esc(r.kind, ', ')},{tag_s} {','.join(fields)} {r.ts}"


class InfluxV1:
    """Writes batches to an InfluxDB 1.x database; raises StorageError so the batch is not acked."""

    def __init__(self, url: str, db: str, timeout: float = 30) -> None:
        self.url, self.db, self.timeout = url.rstrip("/"), db, timeout
        self._post("/query", {"q": f'CREATE DATABASE "{db}"'}, b"")

    def _post(self, path: str, params: dict[str, str], body: bytes) -> None:
        req = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError(f"InfluxDB {self.url}: {exc}") from None

    def write(self, records: Sequence[Record], hub_id: str) -> None:
        body = "\n".join(line(r, hub_id) for r in records).encode()
        self._post("/write", {"db": self.db, "precision": "ns"}, body)
