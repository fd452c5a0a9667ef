"""Wiring: the one place where the hub's parts are built and connected, started and stopped."""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import orjson

from fieldhub import __version__
from fieldhub.core.config import Config
from fieldhub.core.consumer import ConsumerRunner
from fieldhub.core.control import SOCKET_NAME, ControlServer
from fieldhub.core.datadir import (HUB_INFO_FILE, LOG_FILE, OPLOG_FILE, REGISTRY_FILE, STORE_FILE,
                                    prepare_data_dir, take_lock)
from fieldhub.core.log import DurableLog
from fieldhub.core import profiles
from fieldhub.core.oplog import OpLog
from fieldhub.core.registry import Registry
from fieldhub.sinks.store import LocalStore



class Component(Protocol):
    """A long-lived part of the hub (a source, a sink, a manager)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@dataclass
class HubContext:
    """What a component builder may use; builders pass on only what their part needs."""

    config: Config
    data_dir: Path
    hub_id: str
    log: DurableLog
    registry: Registry
    oplog: OpLog
    control: ControlServer
    #: set when the hub is stopping; long-running parts may wait on it
    stopping: threading.Event = field(default_factory=threading.Event)


#: Component builders, "module:function", each ``build(ctx) -> Component | None`` (None = not
#: configured). Order is start order; stop runs in reverse. A new part adds one line here.
COMPONENTS: tuple[str, ...] = (
    "fieldhub.hub:build_store",

    # MQTT ingest, presence (issue 3)
    "fieldhub.sources.mqtt.ingest:build",

    # serial devices (issue 4)
    "fieldhub.sources.serial.ingest:build",

    # drones / MAVLink (issue 5)
    "fieldhub.sources.mavlink.drones:build_drones",

    # InfluxDB sink (issue 6)
    "fieldhub.sinks.influx.writer:build",

    # uplink (issue 7)
    "fieldhub.uplink.sender:build",
)


def build_store(ctx: HubContext) -> Component | None:
    cfg = ctx.config.store
    if not cfg.enabled:
        return None
    store = LocalStore(ctx.data_dir / STORE_FILE, retention=cfg.retention or None)
    return ConsumerRunner(ctx.log, store, batch=cfg.batch, oplog=ctx.oplog)


def open_log(config: Config, oplog: OpLog) -> DurableLog:
    c = config.log
    return DurableLog(config.data_dir / LOG_FILE, commit_interval=c.commit_interval,
                      commit_max=c.commit_max, disk_cap=c.disk_cap or None,
                      compact_interval=c.compact_interval, oplog=oplog, hub_id=config.hub.id)


class Hub:
    """Builds every configured component around one durable log and runs them."""

    def __init__(self, config: Config, *, extra: tuple[Callable[[HubContext], Any], ...] = ()) -> None:
        self.config = config
        self.data_dir = prepare_data_dir(config.data_dir)
        self._lock_fd = self._lock()
        self.oplog = OpLog(self.data_dir / OPLOG_FILE)
        self.log = open_log(config, self.oplog)
        self.registry = Registry(self.data_dir / REGISTRY_FILE, profiles.names())
        self.control = ControlServer(self.data_dir / SOCKET_NAME)
        self.ctx = HubContext(config, self.data_dir, config.hub.id, self.log, self.registry,
                              self.oplog, self.control)
        self.components: list[Any] = []
        self.started = 0.0
        for spec in COMPONENTS:
            module, _, fn = spec.partition(":")
            comp = getattr(importlib.import_module(module), fn)(self.ctx)
            if comp is not None:
                self.components.append(comp)
        for builder in extra:
            comp = builder(self.ctx)
            if comp is not None:
                self.components.append(comp)
        self.control.register("ping", lambda args: {"version": __version__, "hub_id": config.hub.id})
        self.control.register("status", lambda args: self.live_status())

    def _lock(self) -> int:
        return take_lock(self.data_dir)

    def start(self) -> None:
        self.started = time.time()
        info = {"hub_id": self.config.hub.id, "version": __version__, "pid": os.getpid(),
                "started_ns": time.time_ns()}
        (self.data_dir / HUB_INFO_FILE).write_bytes(orjson.dumps(info))
        self.oplog.write("info", "hub_started", f"hub {self.config.hub.id} started (v{__version__})",
                         f"hub {self.config.hub.id} 已启动", pid=os.getpid())
        self.control.start()
        for comp in self.components:
            comp.start()

    def stop(self) -> None:
        self.ctx.stopping.set()
        for comp in reversed(self.components):
            try:
                comp.stop()
            except Exception as exc:  # noqa: BLE001 - stopping one part must not strand the rest
                self.oplog.write("error", "component_stop_failed", f"{comp.name}: {exc}",
                                 f"{comp.name} 停止失败：{exc}")
        self.control.stop()
        self.log.close()
        self.registry.close()
        self.oplog.write("info", "hub_stopped", f"hub {self.config.hub.id} stopped cleanly",
                         f"hub {self.config.hub.id} 已正常停止")
        os.close(self._lock_fd)

    def run(self, stop: threading.Event | None = None, on_tick: Callable[[], None] | None = None) -> None:
        """Run in the foreground until SIGINT/SIGTERM (or ``stop`` is set)."""
        stop = stop or threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            while not stop.wait(1.0):
                if on_tick is not None:
                    on_tick()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def live_status(self) -> dict[str, Any]:
        from fieldhub.status import collect

        status = collect(self.config, log=self.log, registry=self.registry)
        status["running"] = True
        status["pid"] = os.getpid()
        status["uptime_s"] = round(time.time() - self.started, 1)
        status["log"]["stats"] = dict(self.log.stats)
        status["components"] = {c.name: c.status() for c in self.components}
        status["recent_errors"] = [e for e in self.oplog.recent if e["level"] != "info"][-10:]
        return status
