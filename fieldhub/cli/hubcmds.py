"""The hub itself: ``init``, ``run``, ``status``, ``events`` and ``consumers list|drop``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from fieldhub import __version__
from fieldhub.cli.common import emit_json, emit_json_lines, example, hub_options, json_option, local_time
from fieldhub.core import audit
from fieldhub.core import config as configmod
from fieldhub.core.errors import FieldhubError, HubNotRunning
from fieldhub.core.oplog import OpLog


@click.command("init")
@click.option("--config", "config_path", default="fieldhub.toml", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the sample config.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@example("fieldhub init --config /etc/fieldhub/fieldhub.toml")
def init(config_path: str, force: bool) -> None:
    """Write a documented sample config (every key, with its default)."""
    path = Path(config_path)
    if path.exists() and not force:
        raise FieldhubError(f"{path} exists; use --force to overwrite / 文件已存在")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from fieldhub.hub import sample_config

        path.write_text(sample_config(), encoding="utf-8")
    except OSError as exc:
        raise FieldhubError(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"wrote {path}; edit it, then: fieldhub run --config {path}")


@click.command("run")
@hub_options
@click.option("--broker", metavar="mqtt://HOST:PORT", help="MQTT broker to ingest from. [mqtt.broker]")
@example("fieldhub run --config fieldhub.toml --broker mqtt://127.0.0.1:1883")
def run(cfg: configmod.Config) -> None:
    """Run the hub in the foreground until Ctrl-C / SIGTERM, then shut down cleanly."""
    from fieldhub.hub import Hub

    hub = Hub(cfg)
    if not any(type(c).__module__.startswith("fieldhub.sources.") for c in hub.components):
        where = f"config {cfg.path}" if cfg.path is not None else (
            "no config file (--config, $FIELDHUB_CONFIG, ./fieldhub.toml, /etc/fieldhub/fieldhub.toml)")
        click.echo(f"fieldhub: warning: no device source is configured ({where}; no [mqtt] broker, [serial] "
                   f"ports or [mavlink] endpoints): this hub will receive nothing; `fieldhub init` writes a "
                   f"documented sample / 未配置任何设备来源，hub 将收不到数据", err=True)
    click.echo(f"fieldhub {__version__}: hub {cfg.hub.id} running, data dir {hub.data_dir}; "
               f"components: {', '.join(c.name for c in hub.components)}. Ctrl-C to stop.", err=True)
    hub.run(on_started=lambda: _echo_from_now(hub.oplog))
    click.echo("stopped cleanly / 已正常停止", err=True)


def _echo_from_now(oplog: OpLog) -> None:
    """Once the hub runs, its warnings and errors reach the console as they happen (those of the
    start itself first). A start that fails is told by its one error line alone."""
    for entry in list(oplog.recent):
        if entry["level"] != "info":
            _console_line(entry)
    oplog.echo = _console_line


def _console_line(entry: dict[str, Any]) -> None:
    """One operator-log entry on the console: local time, level, English / Chinese."""
    zh = entry.get("message_zh")
    both = entry["message"] + (f" / {zh}" if zh and zh != entry["message"] else "")
    click.echo(f"{local_time(entry['ts'])} [{entry['level']}] {both}", err=True)


@click.command("status")
@hub_options
@json_option
@click.option("--watch", is_flag=True, help="Live screen, refreshed every --interval seconds until Ctrl-C "
              "(fits 80x24; with --json one JSON document per refresh).")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--once", is_flag=True, help="With --watch: print one frame of the live screen and exit.")
@example("fieldhub status --data-dir /var/lib/fieldhub --json\nfieldhub status --watch")
def status(cfg: configmod.Config, as_json: bool, watch: bool, interval: float, once: bool) -> None:
    """Devices online/offline by level and kind, consumer backlogs, disk use, last errors.

    Asks the running hub; if none runs, reads the data dir directly.
    """
    if watch:
        _watch(cfg, as_json, max(0.2, interval), once)
        return
    data = _snapshot(cfg)
    if as_json:
        emit_json(data)
        return
    from fieldhub.cli.render import print_status

    print_status(data)


def _snapshot(cfg: configmod.Config) -> dict[str, Any]:
    """The running hub's status, or the data dir's when no hub runs."""
    from fieldhub.core import control
    from fieldhub.status import collect

    try:
        data: dict[str, Any] = control.call(cfg.data_dir, "status")
    except HubNotRunning:
        if not cfg.data_dir.is_dir():
            raise FieldhubError(f"data dir {cfg.data_dir} does not exist: no hub has run there (check "
                                f"--data-dir / [hub] data_dir) / 数据目录不存在") from None
        data = collect(cfg)
    return data


def _watch(cfg: configmod.Config, as_json: bool, interval: float, once: bool) -> None:
    """The live screen: one frame per ``interval`` until Ctrl-C (a normal exit here)."""
    import time

    from rich.live import Live

    from fieldhub.cli.render import console, status_frame

    if as_json:
        try:
            while True:
                emit_json_lines([orjson.dumps(_snapshot(cfg), default=str)])
                if once:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return
    out = console()
    size = out.size
    if once:
        out.print(status_frame(_snapshot(cfg), size.width, size.height))
        return
    try:
        with Live(status_frame(_snapshot(cfg), size.width, size.height), console=out, screen=True,
                  auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                size = out.size
                live.update(status_frame(_snapshot(cfg), size.width, size.height), refresh=True)
    except KeyboardInterrupt:
        return


@click.command("events")
@click.option("--level", type=click.Choice(["info", "warning", "error"]), default="info", show_default=True,
              help="Lowest level shown.")
@click.option("--limit", default=50, show_default=True, help="How many of the latest entries.")
@hub_options
@json_option
@example("fieldhub events --level warning --limit 20")
def events(cfg: configmod.Config, level: str, limit: int, as_json: bool) -> None:
    """The operator log: what the hub did and what went wrong (操作日志), newest last."""
    from fieldhub.core.datadir import OPLOG_FILE
    from fieldhub.core.oplog import LEVELS, tail

    entries = tail(cfg.data_dir / OPLOG_FILE, limit, LEVELS[LEVELS.index(level):])
    if as_json:
        emit_json_lines(orjson.dumps(e) for e in entries)
        return
    for e in entries:
        click.echo(f"{local_time(e.get('ts'))} {e.get('level', '?'):<7} {e.get('event', '')}: "
                   f"{e.get('message', '')}")
        if e.get("message_zh") and e.get("message_zh") != e.get("message"):
            click.echo(f"{'':>33}{e['message_zh']}")


# ----------------------------------------------------------------------------- consumers
@click.group("consumers")
def consumers() -> None:
    """The durable log's consumers (store, influx, uplink...) and their cursors."""


@consumers.command("list")
@hub_options
@json_option
@example("fieldhub consumers list --json")
def consumers_list(cfg: configmod.Config, as_json: bool) -> None:
    """Each consumer's backlog per priority class."""
    from fieldhub.status import collect

    info = collect(cfg)["log"].get("consumers", {})
    if as_json:
        emit_json(info)
        return
    from fieldhub.cli.render import table

    table(["consumer", "backlog", "by class"],
          [[name, c["backlog_total"], " ".join(f"{k}={v}" for k, v in c["backlog"].items() if v)]
           for name, c in sorted(info.items())], title=f"{len(info)} consumers")


@consumers.command("drop")
@click.argument("name")
@hub_options
@example("fieldhub consumers drop influx   # after removing [influx] from the config, hub stopped")
def consumers_drop(cfg: configmod.Config, name: str) -> None:
    """Forget a consumer that is no longer configured, so its cursor stops holding records.

    The hub must be stopped. A configured consumer comes back at the next start and begins
    with what is still in the log.
    """
    from fieldhub.core.datadir import LOG_FILE, OPLOG_FILE, hub_lock
    from fieldhub.core.log import DurableLog
    from fieldhub.core.oplog import OpLog

    with hub_lock(cfg.data_dir):
        oplog = OpLog(cfg.data_dir / OPLOG_FILE)
        log = DurableLog(cfg.data_dir / LOG_FILE, oplog=oplog)
        try:
            if name not in log.consumer_names():
                raise FieldhubError(f"no consumer {name!r}; consumers: {', '.join(log.consumer_names()) or 'none'}")
            log.drop_consumer(name)
            log.compact()
        finally:
            log.close()
        oplog.write("warning", "consumer_dropped", f"consumer {name} dropped by the operator",
                    f"操作员删除了消费者 {name}")
        audit.record(cfg.data_dir, audit.operator(), "consumer.drop", name)
    click.echo(f"dropped consumer {name}; what only it still needed is compacted away")
