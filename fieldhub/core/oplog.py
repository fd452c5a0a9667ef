"""The operator log: a JSON-lines file of what the hub did and what went wrong, in two languages."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

LEVELS = ("info", "warning", "error")


class OpLog:
    """Append-only operator log (``oplog.jsonl`` in the data dir); ``None`` path keeps memory only."""

    def __init__(self, path: Path | str | None, keep: int = 200) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.counts = {level: 0 for level in LEVELS}
        #: called with each warning and error entry (``fieldhub run`` prints them on the console)
        self.echo: Callable[[dict[str, Any]], None] | None = None

    def write(self, level: str, event: str, message: str, message_zh: str = "", **extra: Any) -> None:
        entry = {"ts": time.time_ns(), "level": level, "event": event, "message": message,
                 "message_zh": message_zh or message, **extra}
        line = orjson.dumps(entry, default=str) + b"\n"
        with self._lock:
            self.recent.append(entry)
            self.counts[level] = self.counts.get(level, 0) + 1
            if self.path is not None:
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                    try:
                        os.write(fd, line)
                    finally:
                        os.close(fd)
                except OSError:
                    pass  # the operator log must never take the hub down; entry stays in memory
        if self.echo is not None and level != "info":
            try:
                self.echo(entry)
            except Exception:  # noqa: BLE001 - a console that went away must not take the hub down
                pass


def tail(path: Path, n: int = 20, levels: tuple[str, ...] = LEVELS) -> list[dict[str, Any]]:
    """The last ``n`` entries of an operator log file at the given levels (torn lines skipped)."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        lines = f.read().splitlines()
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("level") in levels:
            out.append(entry)
            if len(out) >= n:
                break
    return list(reversed(out))
