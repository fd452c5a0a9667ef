"""What the hub holds and how it is doing, read from the data dir (running or not)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.config import Config
from fieldhub.core.errors import StorageError
from fieldhub.core.log import DurableLog
from fieldhub.core.logview import LogView
from fieldhub.core.oplog import tail
from fieldhub.core.registry import AdminCode, Registry
from fieldhub.sinks.store import DEFAULT_OFFLINE_AFTER_S, LocalStore

__all__ = ["DEFAULT_OFFLINE_AFTER_S", "collect"]


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def collect(config: Config, *, log: DurableLog | None = None,
            registry: Registry | None = None) -> dict[str, Any]:
    from fieldhub.core.datadir import HUB_INFO_FILE, LOG_FILE, OPLOG_FILE, REGISTRY_FILE, STORE_FILE

    data_dir = config.data_dir
    out: dict[str, Any] = {"hub_id": config.hub.id, "data_dir": str(data_dir), "running": False,
                           "time_utc_ns": time.time_ns()}
    info_path = data_dir / HUB_INFO_FILE
    if log is None and info_path.exists():  # the hub that last ran here names itself
        try:
            hub_info = orjson.loads(info_path.read_bytes())
            out["hub_id"] = hub_info.get("hub_id", out["hub_id"])
            out["last_started_ns"] = hub_info.get("started_ns")
        except (orjson.JSONDecodeError, OSError):
            pass
    # devices: online/offline from each device's latest record and latest presence record
    reg = registry or (Registry(data_dir / REGISTRY_FILE) if (data_dir / REGISTRY_FILE).exists() else None)
    devices = reg.all() if reg else []
    states: dict[str, str] = {}
    store_path = data_dir / STORE_FILE
    if store_path.exists():
        store = LocalStore(store_path, readonly=True)
        try:
            states = store.device_states([d.id for d in devices], time.time_ns())
            out["store"] = {"records": store.record_count(), "bytes": _file_size(store_path)}
        except StorageError:
            out["store"] = {"records": 0, "bytes": _file_size(store_path)}
        finally:
            store.close()
    by_level: dict[str, dict[str, int]] = defaultdict(lambda: {"online": 0, "offline": 0})
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"online": 0, "offline": 0})
    for dev in devices:
        state = states.get(dev.id, "offline")
        by_level[AdminCode(dev.admin_code).level][state] += 1
        by_kind[dev.kind][state] += 1
    out["devices"] = {"total": len(devices), "by_level": dict(by_level), "by_kind": dict(by_kind),
                      # registry devices not heard from (offline), for the live screen; at most 50 named
                      "silent": sorted(d.id for d in devices if states.get(d.id, "offline") == "offline")[:50]}
    if reg is not None and registry is None:
        reg.close()
    # log: size, consumers, quarantine, counters
    log_path = data_dir / LOG_FILE
    info: dict[str, Any] = {"bytes": _file_size(log_path), "disk_cap": config.log.disk_cap}
    if log is not None:
        info.update(log.view().summary())
    elif log_path.exists():
        with LogView.open(log_path) as view:
            info.update(view.summary())
    out["log"] = info
    out["recent_errors"] = tail(data_dir / OPLOG_FILE, 10, ("warning", "error"))
    return out
