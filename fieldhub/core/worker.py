"""The one way a part of fieldhub owns a thread: named, a daemon, with a stop event and a
bounded join, so that stopping never waits forever on a thread stuck in a system call.

    self._worker = Worker("influx-writer", self._run)     # _run(stop: threading.Event)
    self._worker.start()
    ...
    self._worker.stop(timeout=5)    # sets the event, joins for at most 5 s; False if still alive
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

#: how long a stop waits for a thread unless told otherwise
DEFAULT_JOIN = 5.0


class Worker:
    """One daemon thread running ``target(stop_event, *args)`` until the event is set.

    ``start`` is idempotent while the thread runs; ``stop`` is idempotent always and returns
    whether the thread ended within ``timeout``. A thread still alive after its timeout is
    left to die with the process (it is a daemon) and reported through ``alive``.
    """

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self._target, self._args = target, args
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        if self._thread is not None and self._thread.is_alive():
            return self
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._target, args=(self.stop_event, *self._args),
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def signal(self) -> None:
        """Ask the thread to end without waiting for it."""
        self.stop_event.set()

    def join(self, timeout: float = DEFAULT_JOIN) -> bool:
        t = self._thread
        if t is None or t is threading.current_thread():
            return True
        t.join(max(0.0, timeout))
        return not t.is_alive()

    def stop(self, timeout: float = DEFAULT_JOIN) -> bool:
        self.signal()
        return self.join(timeout)


def stop_all(workers: list[Worker], timeout: float = DEFAULT_JOIN) -> bool:
    """Signal every worker at once, then join them all within one shared ``timeout``."""
    for w in workers:
        w.signal()
    deadline = time.monotonic() + timeout
    ok = True
    for w in workers:
        ok = w.join(deadline - time.monotonic()) and ok
    return ok


class ServerLoop:
    """A ``socketserver`` server's accept loop on a Worker, with a bounded stop.

    ``serve_forever``'s ``shutdown`` waits without a bound; this loop handles one request at a
    time (each on its own daemon thread with a threading server) and looks at its stop flag every
    ``poll`` seconds. ``stop`` joins for at most ``timeout`` and closes the server's socket."""

    def __init__(self, name: str, server: socketserver.BaseServer, poll: float = 0.2) -> None:
        self.server = server
        server.timeout = poll
        if isinstance(server, socketserver.ThreadingMixIn):
            server.daemon_threads = True
        self._worker = Worker(name, self._run).start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.server.handle_request()

    def stop(self, timeout: float = DEFAULT_JOIN) -> None:
        self._worker.stop(timeout)
        self.server.server_close()
