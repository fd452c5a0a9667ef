"""Listing the dead-letter area (the log's quarantine) for operators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldhub.core.logview import LogView, QuarantineItem


def _preview(payload: bytes | None, n: int = 60) -> str:
    if payload is None:
        return ""
    text = payload[:n].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "." for ch in text)
    return text + ("…" if len(payload) > n else "")


def as_dict(item: QuarantineItem) -> dict[str, Any]:
    """An item as ``fieldhub quarantine list --json`` shows it."""
    payload = item.payload
    return {"qid": item.qid, "ts": item.ts, "source": item.source, "device_id": item.device_id,
            "reason": item.reason, "payload_preview": _preview(payload),
            "payload_hex": payload.hex() if payload else "", "size": len(payload or b""),
            "meta": item.meta, "state": item.state}


def list_items(data_dir: Path, *, source: str | None = None, state: str = "held",
               limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` items in ``state`` ("all" for any), from the data dir's log,
    whether a hub runs there or not."""
    from fieldhub.core.datadir import LOG_FILE

    path = Path(data_dir) / LOG_FILE
    if not path.exists():
        return []
    with LogView.open(path) as view:
        items = view.quarantine(source=source, state=state, limit=limit)
    return [as_dict(i) for i in items]
