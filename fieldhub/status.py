"""What the hub holds and how it is doing, read from the data dir (running or not)."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.config import Config
from fieldhub.core.log import DurableLog, backlog, connect
from fieldhub.core.oplog import tail
from fieldhub.core.registry import AdminCode, Registry

#: a device with no record for this long is shown offline (presence may refine this)
DEFAULT_OFFLINE_AFTER_S = 600


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def device_states(db: sqlite3.Connection, device_ids: list[str], now_ns: int,
                  offline_after_s: float = DEFAULT_OFFLINE_AFTER_S) -> dict[str, str]:
    """online/offline per device: an offline ``presence`` record (last will, unplugged port,
    lost heartbeat) newer than the device's last data wins; otherwise the device is online if
    it reported within ``offline_after_s``."""
    out: dict[str, str] = {}
    horizon = now_ns - int(offline_after_s * 1e9)
    for dev in device_ids:
        data = db.execute("SELECT ts FROM points WHERE device_id=? AND kind!='presence' "
                          "ORDER BY ts DESC LIMIT 1", (dev,)).fetchone()
        pres = db.execute("SELECT ts, fields FROM points WHERE device_id=? AND kind='presence' "
                          "ORDER BY ts DESC LIMIT 1", (dev,)).fetchone()
        last_data = data[0] if data else None
        if pres and (last_data is None or pres[0] >= last_data):
            online = bool(orjson.loads(pres[1]).get("online"))
            out[dev] = "online" if online and pres[0] >= horizon else "offline"
        else:
            out[dev] = "online" if last_data is not None and last_data >= horizon else "offline"
    return out


def collect(config: Config, *, log: DurableLog | None = None,
            registry: Registry | None = None) -> dict[str, Any]:
    from fieldhub.core.datadir import HUB_INFO_FILE, LOG_FILE, OPLOG_FILE, REGISTRY_FILE, STORE_FILE

    data_dir = config.data_dir
    out: dict[str, Any] = {"hub_id": config.hub.id, "data_dir": str(data_dir), "running": False,
                           "time_utc_ns": time.time_ns()}
    info_path = data_dir / HUB_INFO_FILE
    if log is None and info_path.exists():  # the hub that last ran here names itself
        try:
            info = orjson.loads(info_path.read_bytes())
            out["hub_id"] = info.get("hub_id", out["hub_id"])
            out["last_started_ns"] = info.get("started_ns")
        except (orjson.JSONDecodeError, OSError):
            pass
    # devices: online/offline from each device's latest record and latest presence record
    reg = registry or (Registry(data_dir / REGISTRY_FILE) if (data_dir / REGISTRY_FILE).exists() else None)
    devices = reg.all() if reg else []
    states: dict[str, str] = {}
    store_path = data_dir / STORE_FILE
    if store_path.exists():
        db = connect(store_path)
        try:
            states = device_states(db, [d.id for d in devices], time.time_ns())
            out["store"] = {"records": db.execute("SELECT count(*) FROM points").fetchone()[0],
                            "bytes": _file_size(store_path)}
        except sqlite3.OperationalError:
            out["store"] = {"records": 0, "bytes": _file_size(store_path)}
        finally:
            db.close()
    by_level: dict[str, dict[str, int]] = defaultdict(lambda: {"online": 0, "offline": 0})
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"online": 0, "offline": 0})
    for dev in devices:
        state = states.get(dev.id, "offline")
        by_level[AdminCode(dev.admin_code).level][state] += 1
        by_kind[dev.kind][state] += 1
    out["devices"] = {"total": len(devices), "by_level": dict(by_level), "by_kind": dict(by_kind)}
    if reg is not None and registry is None:
        reg.close()
    # log: size, consumers, quarantine, counters
    log_path = data_dir / LOG_FILE
    info: dict[str, Any] = {"bytes": _file_size(log_path), "disk_cap": config.log.disk_cap}
    if log_path.exists():
        db = log._reader() if log is not None else connect(log_path)
        try:
            info["records"] = db.execute("SELECT count(*) FROM log").fetchone()[0]
            consumers = [r[0] for r in db.execute("SELECT DISTINCT consumer FROM cursors ORDER BY consumer")]
            info["consumers"] = {c: {"backlog": backlog(db, c)} for c in consumers}
            for c in consumers:
                info["consumers"][c]["backlog_total"] = sum(info["consumers"][c]["backlog"].values())
            info["quarantine_held"] = db.execute(
                "SELECT count(*) FROM quarantine WHERE state='held'").fetchone()[0]
            info["counters"] = dict(db.execute("SELECT name, value FROM counters"))
        except sqlite3.OperationalError as exc:
            info["error"] = str(exc)
        finally:
            if log is None:
                db.close()
    out["log"] = info
    out["recent_errors"] = tail(data_dir / OPLOG_FILE, 10, ("warning", "error"))
    return out
