"""The consumer interface every sink implements, and the loop that feeds a sink from the log."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Protocol, Sequence

from fieldhub.core.log import Cursor, DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Record


class Sink(Protocol):
    """A destination for records. ``write`` returns only once the destination has accepted
    every record (or quarantined it itself); it raises to say "nothing accepted, retry".
    Writes must be idempotent by ``Record.id``: after a crash the same records come again."""

    name: str

    def write(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


class Backoff:
    """Capped, jittered exponential backoff (full jitter)."""

    def __init__(self, first: float = 0.2, cap: float = 30.0) -> None:
        self.first, self.cap, self.attempt = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class ConsumerRunner:
    """Reads the log through the sink's own cursor, writes, then advances the cursor."""

    def __init__(self, log: DurableLog, sink: Sink, *, batch: int = 5000, oplog: OpLog | None = None,
                 max_wait: float = 0.5, start: str = "earliest") -> None:
        self.log, self.sink, self.batch = log, sink, batch
        self.oplog = oplog or OpLog(None)
        self.max_wait = max_wait
        self.cursor: Cursor = log.cursor(sink.name, start=start)
        self.name = sink.name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats: dict[str, Any] = {"written": 0, "batches": 0, "errors": 0,
                                      "last_success": None, "last_error": None}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"consumer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sink.close()

    def drain_once(self) -> int:
        """Write one batch if there is one; returns how many records went out."""
        entries = self.cursor.read(self.batch)
        if not entries:
            return 0
        self.sink.write([e.record for e in entries])
        self.cursor.commit(entries)
        self.stats["written"] += len(entries)
        self.stats["batches"] += 1
        self.stats["last_success"] = time.time_ns()
        return len(entries)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                n = self.drain_once()
            except Exception as exc:  # noqa: BLE001 - any sink failure means "retry later"
                self.stats["errors"] += 1
                self.stats["last_error"] = {"ts": time.time_ns(), "error": str(exc)}
                delay = backoff.next()
                self.oplog.write("warning", "sink_write_failed",
                                 f"{self.name}: write failed ({exc}); retrying in {delay:.1f}s",
                                 f"{self.name}：写入失败（{exc}），{delay:.1f} 秒后重试",
                                 consumer=self.name)
                self._stop.wait(delay)
                continue
            backoff.reset()
            if n == 0:
                self.cursor.wait(self.max_wait)

    def status(self) -> dict[str, Any]:
        return {"consumer": self.name, **self.stats, "backlog": self.cursor.backlog()}
