"""Reading the dead-letter area (the log's ``quarantine`` table) for operators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.log import connect


def _preview(payload: bytes | None, n: int = 60) -> str:
    if payload is None:
        return ""
    text = payload[:n].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "." for ch in text)
    return text + ("…" if len(payload) > n else "")


def list_items(data_dir: Path, *, source: str | None = None, state: str = "held",
               limit: int = 100) -> list[dict[str, Any]]:
    from fieldhub.core.datadir import LOG_FILE

    path = Path(data_dir) / LOG_FILE
    if not path.exists():
        return []
    db = connect(path)
    try:
        where, args = [], []
        if state != "all":
            where.append("state = ?")
            args.append(state)
        if source:
            where.append("source = ?")
            args.append(source)
        sql = "SELECT qid, ts, source, device_id, reason, payload, meta, state FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY qid DESC LIMIT ?"
        rows = db.execute(sql, [*args, limit]).fetchall()
    finally:
        db.close()
    return [{"qid": q, "ts": ts, "source": src, "device_id": dev, "reason": reason,
             "payload_preview": _preview(payload), "payload_hex": payload.hex() if payload else "",
             "size": len(payload or b""), "meta": orjson.loads(meta) if meta else {}, "state": st}
            for q, ts, src, dev, reason, payload, meta, st in rows]
