"""Wiring: the one place where the hub's parts are built and connected, started and stopped."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from fieldhub import __version__
from fieldhub.core import audit, profiles
from fieldhub.core import config as configmod
from fieldhub.core.component import Component, ComponentSpec, HubContext, command_prefix, load_object
from fieldhub.core.config import Config
from fieldhub.core.control import SOCKET_NAME, ControlServer
from fieldhub.core.datadir import HUB_INFO_FILE, LOG_FILE, OPLOG_FILE, REGISTRY_FILE, prepare_data_dir, take_lock
from fieldhub.core.errors import FieldhubError
from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.registry import Registry

#: The hub's parts, in start order (stop runs in reverse). Each names its config section and
#: class and its builder, ``build(ctx, cfg) -> component | None`` (None = not configured).
#: A new part adds one line here.
COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec("store", "store", "fieldhub.sinks.store:StoreConfig", "fieldhub.sinks.store:build"),
    ComponentSpec("mqtt", "mqtt", "fieldhub.sources.mqtt.config:MqttConfig",
                  "fieldhub.sources.mqtt.ingest:build"),
    ComponentSpec("serial", "serial", "fieldhub.sources.serial.config:SerialConfig",
                  "fieldhub.sources.serial.ingest:build"),
    ComponentSpec("drones", "mavlink", "fieldhub.sources.mavlink.config:MavlinkConfig",
                  "fieldhub.sources.mavlink.drones:build_drones"),
    ComponentSpec("sl651", "sl651", "fieldhub.sources.sl651.config:Sl651Config", "fieldhub.sources.sl651.server:build"),
    ComponentSpec("influx", "influx", "fieldhub.sinks.influx.config:InfluxConfig",
                  "fieldhub.sinks.influx.writer:build"),
    ComponentSpec("uplink", "uplink", "fieldhub.uplink.config:UplinkConfig", "fieldhub.uplink.sender:build"),
    ComponentSpec("metrics", "metrics", "fieldhub.metrics.config:MetricsConfig", "fieldhub.metrics.exporter:build"),
)

#: config section -> "module:Class", from the component list (the core's own [hub] and [log] aside)
SECTIONS: dict[str, str] = {spec.section: spec.config for spec in COMPONENTS if spec.section}

#: how long a whole stop may take; each component gets a share of what is left
STOP_BUDGET = 20.0


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """The config with every component's section (see ``fieldhub.core.config.load``)."""
    return configmod.load(path, overrides, env, sections=SECTIONS)


def sample_config() -> str:
    """What ``fieldhub init`` writes: every section, every key, commented-out defaults."""
    return configmod.sample_config(SECTIONS)


class StartError(FieldhubError):
    """A component could not start; the hub stopped what it had started."""


def open_log(config: Config, oplog: OpLog) -> DurableLog:
    c = config.log
    return DurableLog(config.data_dir / LOG_FILE, commit_interval=c.commit_interval,
                      commit_max=c.commit_max, disk_cap=c.disk_cap or None,
                      compact_interval=c.compact_interval, oplog=oplog, hub_id=config.hub.id)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FieldhubError) else f"{type(exc).__name__}: {text}"


class Hub:
    """Builds every configured component around one durable log and runs them."""

    def __init__(self, config: Config, *,
                 extra: tuple[Callable[[HubContext], Component | None], ...] = ()) -> None:
        self.config = config
        self.data_dir = prepare_data_dir(config.data_dir)
        self._lock_fd: int | None = take_lock(self.data_dir)
        self.components: list[Component] = []
        self._started: list[Component] = []
        self._closed = False
        self.started = 0.0
        self.oplog = OpLog(self.data_dir / OPLOG_FILE)
        try:
            self.log = open_log(config, self.oplog)
            self.registry = Registry(self.data_dir / REGISTRY_FILE, profiles.names())
            self.control = ControlServer(self.data_dir / SOCKET_NAME)
            self.ctx = HubContext(config, self.data_dir, config.hub.id, self.log, self.registry, self.oplog,
                                  live_status=self.live_status)
            for spec in COMPONENTS:
                builder = load_object(spec.builder)
                self._add(builder(self.ctx, config.section(spec.section) if spec.section else None))
            for extra_builder in extra:
                self._add(extra_builder(self.ctx))
            self.control.register("ping", lambda args: {"version": __version__, "hub_id": config.hub.id})
            self.control.register("status", lambda args: self.live_status())
        except BaseException:
            self._close()
            raise

    def _add(self, comp: Component | None) -> None:
        """Keep a built component and put its commands on the control socket as ``<prefix>.<command>``."""
        if comp is None:
            return
        prefix = command_prefix(comp)
        for cmd, handler in comp.commands().items():
            self.control.register(f"{prefix}.{cmd}", handler)
        self.components.append(comp)

    def start(self) -> None:
        """Start the control socket and every component, in order. If one cannot start, stop the
        ones already started (in reverse), release the data dir and raise ``StartError``."""
        self.started = time.time()
        info = {"hub_id": self.config.hub.id, "version": __version__, "pid": os.getpid(),
                "started_ns": time.time_ns()}
        (self.data_dir / HUB_INFO_FILE).write_bytes(orjson.dumps(info))
        self.oplog.write("info", "hub_started", f"hub {self.config.hub.id} started (v{__version__})",
                         f"hub {self.config.hub.id} 已启动", pid=os.getpid())
        audit.record(self.data_dir, "hub", "hub.start", self.config.hub.id,
                     **audit.config_summary(self.config, self.components))
        name = "control socket"
        try:
            self.control.start()
            for comp in self.components:
                name = comp.name
                self._started.append(comp)  # a half-started component is stopped too (stop is idempotent)
                comp.start()
        except BaseException as exc:
            reason = _one_line(exc)
            stopped = [c.name for c in reversed(self._started) if c.name != name]
            self.oplog.write("error", "hub_start_failed",
                             f"{name} could not start ({reason}); stopping "
                             f"{', '.join(stopped) or 'nothing else'}",
                             f"{name} 启动失败（{reason}），正在停止已启动的组件", component=name,
                             stopped=stopped)
            self.stop()
            if not isinstance(exc, Exception):
                raise
            raise StartError(f"{name} could not start: {reason}; the hub stopped "
                             f"/ {name} 启动失败，hub 已停止") from None

    def stop(self, timeout: float = STOP_BUDGET) -> None:
        """Stop the started components in reverse, each within its share of ``timeout``; then the
        control socket, the log and the registry; release the data dir. Idempotent."""
        if self._closed:
            return
        self.ctx.stopping.set()
        deadline = time.monotonic() + timeout
        started = list(reversed(self._started))
        self._started.clear()
        for i, comp in enumerate(started):
            share = max(0.5, (deadline - time.monotonic()) / (len(started) - i))
            try:
                comp.stop(share)
            except Exception as exc:  # noqa: BLE001 - stopping one part must not strand the rest
                self.oplog.write("error", "component_stop_failed", f"{comp.name}: {_one_line(exc)}",
                                 f"{comp.name} 停止失败：{_one_line(exc)}")
        self._close(clean=True)

    def _close(self, clean: bool = False) -> None:
        """Close the control socket, log and registry (whichever were opened); release the lock."""
        if self._closed:
            return
        self._closed = True
        for part in ("control", "log", "registry"):
            obj = getattr(self, part, None)
            if obj is None:
                continue
            try:
                obj.stop() if part == "control" else obj.close()
            except Exception as exc:  # noqa: BLE001 - the lock must be released whatever happens
                self.oplog.write("error", "hub_close_failed", f"{part}: {_one_line(exc)}",
                                 f"{part} 关闭失败：{_one_line(exc)}")
        if clean:
            self.oplog.write("info", "hub_stopped", f"hub {self.config.hub.id} stopped cleanly",
                             f"hub {self.config.hub.id} 已正常停止")
            audit.record(self.data_dir, "hub", "hub.stop", self.config.hub.id, clean=True)
            audit.seal(self.data_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run(self, stop: threading.Event | None = None, on_tick: Callable[[], None] | None = None,
            on_started: Callable[[], None] | None = None) -> None:
        """Run in the foreground until SIGINT/SIGTERM (or ``stop`` is set); ``on_started`` is
        called once every component has started (a start that fails raises ``StartError``)."""
        stop = stop or threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
            try:
                if on_started is not None:
                    on_started()
                while not stop.wait(1.0):
                    if on_tick is not None:
                        on_tick()
            finally:
                self.stop()
        finally:
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
