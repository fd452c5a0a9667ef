"""Link emulator: a user-space TCP proxy adding latency, a bandwidth limit, loss and outages.

The kernel here has no ``tc netem``, so this is what tests, drills and the demo use to play
a GEO satellite link (~300 ms one way, 512 kbit/s). Per direction, bytes are delayed by
the one-way latency, then serialised at the link rate (shared by every connection through
the link, like the real terminal). TCP cannot lose bytes, so loss shows as it does to a
TCP user: each lost segment stalls its direction for a retransmission timeout. Outages
(scheduled or commanded) either freeze the link (``stall``: bytes wait, like a rain fade)
or drop every connection and refuse new ones (``drop``: like a modem losing its carrier).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

SEGMENT = 1400  # bytes per emulated segment (loss is drawn per segment)


@dataclass
class LinkSpec:
    latency: float = 0.3          #: one-way, seconds
    bandwidth: float = 512_000    #: bits per second (0 = unlimited)
    loss: float = 0.0             #: fraction of segments lost (each stalls its direction one RTO)
    outage_every: float = 0.0     #: seconds between scheduled outages (0 = none)
    outage_for: float = 0.0       #: length of a scheduled outage
    outage_mode: str = "stall"    #: stall | drop


@dataclass
class _Dir:
    next_free: float = 0.0
    bytes: int = 0


@dataclass
class LinkStats:
    connections: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    stalls: int = 0
    outages: int = 0
    refused: int = 0
    started: float = field(default_factory=time.monotonic)


class LinkEmulator:
    """``LinkEmulator(listen_port, (host, port), spec).start()``; ``outage(seconds)`` / ``restore()``."""

    def __init__(self, listen_port: int, target: tuple[str, int], spec: LinkSpec | None = None,
                 listen_host: str = "127.0.0.1", seed: int | None = None) -> None:
        self.listen = (listen_host, listen_port)
        self.target = target
        self.spec = spec or LinkSpec()
        self.stats = LinkStats()
        self._rng = random.Random(seed)
        self._dirs = {"up": _Dir(), "down": _Dir()}
        self._down_until = 0.0
        self._forced_down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._error: BaseException | None = None
        self._resume: asyncio.Event | None = None

    # ------------------------------------------------------------------ control
    @property
    def is_down(self) -> bool:
        return self._forced_down or time.monotonic() < self._down_until

    def outage(self, seconds: float | None = None) -> None:
        """Take the link down now, for ``seconds`` (None = until ``restore()``)."""
        if seconds is None:
            self._forced_down = True
        else:
            self._down_until = max(self._down_until, time.monotonic() + seconds)
        self._call(self._begin_outage, seconds)

    def restore(self) -> None:
        self._forced_down = False
        self._down_until = 0.0
        self._call(self._end_outage)

    def set(self, **changes: Any) -> None:
        """Change latency/bandwidth/loss on the fly (e.g. ``set(bandwidth=9600)``)."""
        for k, v in changes.items():
            setattr(self.spec, k, v)

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is None:
            raise RuntimeError("link emulator not started")
        self._loop.call_soon_threadsafe(fn, *args)

    def _begin_outage(self, seconds: float | None) -> None:
        self.stats.outages += 1
        if seconds is None:
            self._forced_down = True
        else:
            self._down_until = max(self._down_until, time.monotonic() + seconds)
            assert self._loop is not None
            self._loop.call_later(seconds, self._wake)
        if self._resume is not None:
            self._resume.clear()
        if self.spec.outage_mode == "drop":
            for w in list(self._writers):
                w.transport.abort()

    def _end_outage(self) -> None:
        self._forced_down = False
        self._down_until = 0.0
        self._wake()

    def _wake(self) -> None:
        if not self.is_down and self._resume is not None:
            self._resume.set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LinkEmulator:
        self._thread = threading.Thread(target=self._thread_main, name="link-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() / run_forever()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._client, *self.listen)
        sched = asyncio.ensure_future(self._schedule())
        self._ready.set()
        await self._stop.wait()
        sched.cancel()
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _schedule(self) -> None:
        s = self.spec
        if s.outage_every <= 0 or s.outage_for <= 0:
            return
        while True:
            await asyncio.sleep(s.outage_every)
            self._begin_outage(s.outage_for)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ forwarding
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_down and self.spec.outage_mode == "drop":
            self.stats.refused += 1
            writer.transport.abort()
            return
        assert self._resume is not None
        await self._resume.wait()  # a stalled link: the SYN goes nowhere until it returns
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        self.stats.active += 1
        self._writers.update((writer, up_w))
        t1 = asyncio.ensure_future(self._pump(reader, up_w, "up"))
        t2 = asyncio.ensure_future(self._pump(up_r, writer, "down"))
        try:
            await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the emulator is stopping
        for t in (t1, t2):
            t.cancel()
        for w in (writer, up_w):
            self._writers.discard(w)
            w.transport.abort()
        self.stats.active -= 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        """Read chunks as they come; deliver each after latency, serialised at the link rate."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, writer, name))
        try:
            while True:
                data = await reader.read(SEGMENT)
                if not data:
                    break
                await queue.put((time.monotonic(), data))
                while queue.qsize() > 256:  # back-pressure: stop reading when 256 segments queue
                    await asyncio.sleep(0.01)
        finally:
            await queue.put(None)
            try:
                await deliver
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, name: str) -> None:
        d = self._dirs[name]
        assert self._resume is not None
        while True:
            item = await queue.get()
            if item is None:
                return
            arrived, data = item
            s = self.spec
            if not self._resume.is_set():
                await self._resume.wait()
                d.next_free = max(d.next_free, time.monotonic())
            # serialise at the link rate, shared by every connection in this direction
            tx = len(data) * 8 / s.bandwidth if s.bandwidth > 0 else 0.0
            d.next_free = max(arrived, d.next_free) + tx
            if s.loss > 0 and self._rng.random() < s.loss * max(1, len(data) / SEGMENT):
                self.stats.stalls += 1
                d.next_free += max(0.2, 4 * s.latency)  # one RTO of head-of-line blocking
            wait = d.next_free + s.latency - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._resume.wait()
            writer.write(data)
            await writer.drain()
            d.bytes += len(data)
            if name == "up":
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)

    def status(self) -> dict[str, Any]:
        st = self.stats
        return {"listen": f"{self.listen[0]}:{self.listen[1]}", "to": f"{self.target[0]}:{self.target[1]}",
                "down": self.is_down, "latency_s": self.spec.latency, "bandwidth_bps": self.spec.bandwidth,
                "loss": self.spec.loss, "connections": st.connections, "active": st.active,
                "bytes_up": st.bytes_up, "bytes_down": st.bytes_down, "stalls": st.stalls,
                "outages": st.outages, "refused": st.refused,
                "uptime_s": round(time.monotonic() - st.started, 1)}


def serve_control(em: LinkEmulator, port: int, host: str = "127.0.0.1") -> Any:
    """A line-command port: ``down [SECONDS]``, ``up``, ``set latency=600ms``, ``status`` (JSON reply)."""
    import json
    import socketserver

    from fieldhub.core.config import parse_duration
    from fieldhub.uplink.config import parse_rate

    class _Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                words = raw.decode(errors="replace").split()
                try:
                    reply = _command(words)
                except (ValueError, IndexError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                self.wfile.write((json.dumps(reply) + "\n").encode())

    def _command(words: list[str]) -> dict[str, Any]:
        if not words:
            return {"ok": False, "error": "empty command"}
        cmd = words[0].lower()
        if cmd == "down":
            em.outage(float(parse_duration(words[1])) if len(words) > 1 else None)
        elif cmd == "up":
            em.restore()
        elif cmd == "set":
            for item in words[1:]:
                key, _, value = item.partition("=")
                if key == "latency":
                    em.set(latency=float(parse_duration(value)))
                elif key == "bandwidth":
                    em.set(bandwidth=parse_rate(value))
                elif key == "loss":
                    em.set(loss=parse_loss(value))
                else:
                    raise ValueError(f"unknown setting {key!r}: latency, bandwidth or loss")
        elif cmd != "status":
            raise ValueError(f"unknown command {cmd!r}: down [SECONDS], up, set KEY=VALUE, status")
        return {"ok": True, "status": em.status()}

    server = socketserver.ThreadingTCPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="link-control", daemon=True).start()
    return server


def parse_loss(text: str) -> float:
    """'1%' or '0.01' -> 0.01."""
    text = str(text).strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 1:
        raise ValueError(f"loss {text!r} must be between 0 and 100%")
    return value
