"""Re-admitting quarantined MQTT messages once the operator has fixed the cause."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fieldhub.core.errors import FieldhubError, StorageError
from fieldhub.core.log import DurableLog
from fieldhub.core.registry import Registry
from fieldhub.sources.mqtt.spec import SOURCE, Rejected, decode

SeenLookup = Callable[[str, int], "bytes | None"]


def readmit(log: DurableLog, registry: Registry, seen: SeenLookup, *, qids: Iterable[int] | None = None,
            reason: str | None = None, device: str | None = None, max_payload: int = 65536,
            max_skew_s: float = 300.0, on_seen: Callable[[list], Any] | None = None) -> dict[str, Any]:
    """Run held MQTT items through ingest validation again; admit those that now pass.

    Items that still fail stay held (with the new reason in the result); true duplicates of
    what is already stored are marked readmitted without a second copy.
    """
    if not (qids or reason or device):
        raise FieldhubError("say what to re-admit: QID..., --reason TEXT or --device ID "
                            "/ 请指定要重新接收的条目")
    rows = log.view().quarantine(source=SOURCE, state="held", qids=list(qids or ()), reason=reason,
                                 device=device, newest_first=False)
    records, ok, seen_rows, still = [], [], [], []
    keys: set[tuple[str, int]] = set()
    for item in rows:
        qid, dev_id, payload, m = item.qid, item.device_id, item.payload, item.meta
        topic = m.get("topic") or ""
        try:
            msg = decode(topic, payload or b"", registry.get(dev_id or ""), int(m.get("recv_ns") or 0),
                         max_bytes=max_payload, max_skew_s=max_skew_s)
        except Rejected as exc:
            still.append({"qid": qid, "device_id": dev_id, "reason": exc.reason})
            continue
        key = (msg.device_id, msg.seq)
        prev = seen(*key)
        if prev is not None and prev != msg.digest:
            still.append({"qid": qid, "device_id": dev_id,
                          "reason": f"seq {msg.seq} already stored with different content"})
            continue
        ok.append(qid)
        if prev is None and key not in keys:
            keys.add(key)
            records.append(msg.record)
            seen_rows.append((msg.device_id, msg.seq, msg.digest))
    added = 0
    if records:
        result = log.append(records)
        added = result.added if result else 0
    if ok:
        log.set_quarantine_state(ok, "readmitted")
        log.bump("readmitted", len(ok))
    if seen_rows and on_seen is not None:
        on_seen(seen_rows)
    return {"matched": len(rows), "readmitted": len(ok), "records_added": added,
            "still_held": still}


def readmit_offline(data_dir: Path, **kw: Any) -> dict[str, Any]:
    """Re-admit with the hub stopped: take the hub's lock, open the log and state directly."""
    from fieldhub.core.datadir import LOCK_FILE, LOG_FILE, REGISTRY_FILE
    from fieldhub.core.profiles import names as known_models
    from fieldhub.sources.mqtt.state import STATE_FILE, MqttState

    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError("the hub holds the data dir but does not answer on its control "
                               "socket; try again / hub 正在运行但未响应") from None
        log = DurableLog(data_dir / LOG_FILE)
        registry = Registry(data_dir / REGISTRY_FILE, known_models())
        state = MqttState(data_dir / STATE_FILE)
        try:
            return readmit(log, registry, state.seen, on_seen=state.add_seen, **kw)
        finally:
            state.close()
            registry.close()
            log.close()
    finally:
        os.close(fd)
