"""``fieldhub demo``: the whole vehicle on one machine — hub, private broker, every simulator."""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldhub.cli.common import emit_json, example, json_option
from fieldhub.core.datadir import REGISTRY_FILE, STORE_FILE
from fieldhub.core.errors import TransportError

if TYPE_CHECKING:  # the hub and the broker are imported when the demo runs, not with every command
    from fieldhub.hub import Hub

DEMO_ADMIN_CODE = "420102001001"  # a village in Jiang'an district, Wuhan, Hubei


@dataclass
class DemoContext:
    """What a demo simulator may use and set before the hub starts."""

    data_dir: Path
    hub_id: str = "demo-vehicle"
    admin_code: str = DEMO_ADMIN_CODE
    broker: str | None = None
    #: extra hub settings, "section.key" -> value (e.g. a serial port path)
    overrides: dict[str, Any] = field(default_factory=dict)
    hub: Hub | None = None
    workdir: Path | None = None

    def add_device(self, device_id: str, kind: str, admin_code: str | None = None, **kw: Any) -> None:
        from fieldhub.core.registry import Device, Registry

        reg = Registry(self.data_dir / REGISTRY_FILE)
        try:
            if reg.get(device_id) is None:
                reg.add(Device(device_id, kind, admin_code or self.admin_code, **kw))
        finally:
            reg.close()


@click.command("demo")
@click.option("--seconds", default=30, show_default=True, help="How long to run (0 = until Ctrl-C).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Keep the demo's data here (default: a temp dir).")
@json_option
@example("fieldhub demo --seconds 20")
def demo(seconds: int, data_dir: str | None, as_json: bool) -> None:
    """Run the hub with every simulator on the embedded defaults and a private broker."""
    summary = run_demo(seconds=seconds, data_dir=Path(data_dir) if data_dir else None, live=not as_json)
    if as_json:
        emit_json(summary)


def run_demo(seconds: float = 30, data_dir: Path | None = None, live: bool = True) -> dict[str, Any]:
    import shutil
    import tempfile

    from fieldhub.cli.render import console
    from fieldhub.hub import Hub, load_config
    from fieldhub.sources.mqtt.mosquitto import Mosquitto

    out = console()
    tmp = None
    if data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="fieldhub-demo-"))
        data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(data_dir=data_dir, workdir=data_dir.parent)
    broker = None
    try:
        broker = Mosquitto(data_dir.parent / "broker").start()
        ctx.broker = broker.url
    except TransportError as exc:
        out.print(f"[yellow]no private broker: {exc}; MQTT simulators are skipped[/]")
    sims = []
    for spec in _demo_specs():
        module, _, cls = spec.partition(":")
        sim = getattr(importlib.import_module(module), cls)(ctx)
        if getattr(sim, "needs_broker", False) and not ctx.broker:
            continue
        sim.setup()
        sims.append(sim)
    overrides = {"hub.data_dir": str(data_dir), "hub.id": ctx.hub_id, **ctx.overrides}
    if ctx.broker:
        overrides.setdefault("mqtt.broker", ctx.broker)
    cfg = load_config(None, overrides, env={})
    hub = Hub(cfg)
    ctx.hub = hub
    hub.start()
    for sim in sims:
        sim.start()
    started = time.monotonic()
    try:
        if live:
            _live_table(hub, sims, seconds)
        else:
            _wait(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for sim in reversed(sims):
            sim.stop()
        _drain(hub)
        hub.stop()
        if broker:
            broker.stop()
    summary = _summary(hub, sims, time.monotonic() - started, data_dir)
    if live:
        _print_summary(summary)
    if tmp is not None and not live:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _demo_specs() -> tuple[str, ...]:
    from simulators import DEMO

    return DEMO


def _wait(seconds: float) -> None:
    stop = threading.Event()
    stop.wait(seconds if seconds > 0 else None)


def _drain(hub: Hub, timeout: float = 10.0) -> None:
    """Let the local store catch up before stopping, so the summary is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(hub.log.backlog("store").values()):  # also true when the store is disabled
            return
        time.sleep(0.1)


def _counts(hub: Hub) -> dict[str, int]:
    from fieldhub.sinks.store import LocalStore

    path = hub.data_dir / STORE_FILE
    if not path.exists():
        return {}
    store = LocalStore(path, readonly=True)
    try:
        return store.counts()
    finally:
        store.close()


def _live_table(hub: Hub, sims: list[Any], seconds: float) -> None:
    from rich.live import Live
    from rich.table import Table

    end = time.monotonic() + seconds if seconds > 0 else None

    def render() -> Table:
        t = Table(title=f"fieldhub demo — hub {hub.config.hub.id} (Ctrl-C to stop)", title_justify="left")
        t.add_column("kind 类型")
        t.add_column("stored 已存储", justify="right")
        for kind, n in sorted(_counts(hub).items()):
            t.add_row(kind, str(n))
        st = hub.log.stats
        t.add_row("[dim]log appended / duplicates[/]", f"{st['appended']} / {st['duplicates']}")
        for sim in sims:
            for k, v in sim.summary().items():
                t.add_row(f"[dim]{sim.name}: {k}[/]", str(v))
        if end:
            t.caption = f"{max(0, end - time.monotonic()):.0f}s left"
        return t

    with Live(render(), refresh_per_second=2) as live:
        while end is None or time.monotonic() < end:
            time.sleep(0.5)
            live.update(render())


def _summary(hub: Hub, sims: list[Any], elapsed: float, data_dir: Path) -> dict[str, Any]:
    from fieldhub.status import collect

    status = collect(hub.config)
    return {"seconds": round(elapsed, 1), "data_dir": str(data_dir), "stored_by_kind": _counts(hub),
            "log": {k: status["log"].get(k) for k in ("records", "quarantine_held", "counters")},
            "simulators": {s.name: s.summary() for s in sims},
            "devices": status["devices"]["total"]}


def _print_summary(s: dict[str, Any]) -> None:
    from fieldhub.cli.render import console

    c = console()
    c.print(f"[bold]demo summary 演示汇总[/] after {s['seconds']}s, data in {s['data_dir']}")
    total = sum(s["stored_by_kind"].values())
    c.print(f"  stored 已存储: {total} records in {len(s['stored_by_kind'])} kinds; "
            f"devices 设备: {s['devices']}; quarantined 隔离: {s['log'].get('quarantine_held') or 0}")
    for kind, n in sorted(s["stored_by_kind"].items()):
        c.print(f"    {kind:<24} {n}")
    for name, info in s["simulators"].items():
        c.print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    c.print(f"  query it: fieldhub query --data-dir {s['data_dir']} --since 1h")
