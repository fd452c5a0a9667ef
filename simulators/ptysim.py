"""A device simulator behind a real pseudo-terminal, with fault injection (noise, splits, unplug)."""

from __future__ import annotations

import errno
import os
import pty
import random
import select
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

from fieldhub.core.errors import FieldhubError


class PtySim:
    """Owns a pty pair and a stable symlink to the slave (like ``/dev/serial/by-id/...``).

    Subclasses implement ``on_input(bytes)`` and ``tick(now)`` and call ``emit(bytes)``.
    Faults: ``noise`` (probability per emitted chunk of garbage bytes or a flipped byte),
    ``split`` (write frames in random pieces), ``unplug()`` / ``replug()`` (the pty vanishes
    and comes back under the same link path, as a USB adapter does).
    """

    kind = "device"
    tick_interval = 0.05

    def __init__(self, link: str | Path | None = None, *, noise: float = 0.0, split: bool = False,
                 seed: int | None = None) -> None:
        self._tmp = None
        if link is None:
            self._tmp = tempfile.mkdtemp(prefix=f"fieldhub-{self.kind}-")
            link = Path(self._tmp) / f"tty{self.kind}"
        self.link = Path(link)
        self.noise = noise
        self.split = split
        self.rng = random.Random(seed)
        self.master = -1
        self.slave = -1
        self.pty_path = ""
        self.stats = {"bytes_out": 0, "bytes_in": 0, "dropped": 0, "garbage_injected": 0,
                      "unplugs": 0, "frames_out": 0, "bad_input": 0}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return str(self.link)

    # -- pty lifecycle
    def _plug(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        self.pty_path = os.ttyname(slave)
        tmp_link = self.link.with_name(self.link.name + ".new")
        try:
            tmp_link.unlink()
        except FileNotFoundError:
            pass
        os.symlink(self.pty_path, tmp_link)
        os.replace(tmp_link, self.link)

    def unplug(self) -> None:
        """The device vanishes: the pty closes (readers get EIO) and the link path disappears."""
        with self._lock:
            self.stats["unplugs"] += 1
            for fd in (self.master, self.slave):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.master = self.slave = -1
            try:
                self.link.unlink()
            except FileNotFoundError:
                pass
        self.on_unplug()

    def replug(self) -> None:
        with self._lock:
            if self.master < 0:
                self._plug()

    @property
    def plugged(self) -> bool:
        return self.master >= 0

    def start(self) -> PtySim:
        self._plug()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.unplug()
        self.stats["unplugs"] -= 1
        if self._tmp:
            try:
                os.rmdir(self._tmp)
            except OSError:
                pass

    def __enter__(self) -> PtySim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- I/O
    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            fd = self.master
            timeout = max(0.0, next_tick - time.monotonic())
            if fd < 0:
                self._stop.wait(timeout or self.tick_interval)
            else:
                try:
                    ready, _, _ = select.select([fd], [], [], timeout)
                except (OSError, ValueError):
                    ready = []
                if ready:
                    try:
                        data = os.read(fd, 4096)
                    except OSError:
                        data = b""
                    if data:
                        self.stats["bytes_in"] += len(data)
                        with self._lock:
                            try:
                                self.on_input(data)
                            except (ValueError, IndexError, UnicodeError, FieldhubError):
                                # a real module ignores what it cannot parse; so does the simulator
                                self.stats["bad_input"] += 1
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick_interval
                with self._lock:
                    self.tick(now)

    def emit(self, data: bytes, frame: bool = True) -> None:
        """Write to the host side, with the configured faults; dropped if nobody reads."""
        if frame:
            self.stats["frames_out"] += 1
        if self.noise and self.rng.random() < self.noise:
            if self.rng.random() < 0.5:
                junk = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 12)))
                data = junk + data
                self.stats["garbage_injected"] += len(junk)
            elif data:
                i = self.rng.randrange(len(data))
                data = data[:i] + bytes(((data[i] ^ 0x5A) or 1,)) + data[i + 1:]
                self.stats["garbage_injected"] += 1
        pieces = [data]
        if self.split and len(data) > 2:
            cut = self.rng.randint(1, len(data) - 1)
            pieces = [data[:cut], data[cut:]]
        for piece in pieces:
            self._write(piece)

    def _write(self, data: bytes) -> None:
        with self._lock:
            fd = self.master
            if fd < 0:
                self.stats["dropped"] += len(data)
                return
            try:
                n = os.write(fd, data)
                self.stats["bytes_out"] += n
                if n < len(data):
                    self.stats["dropped"] += len(data) - n
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EIO):
                    self.stats["dropped"] += len(data)
                else:
                    raise

    # -- hooks
    def on_input(self, data: bytes) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def on_unplug(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return dict(self.stats)
