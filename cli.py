"""The ``fieldhub`` command: parses and prints; the work lives in ``fieldhub/``."""

from __future__ import annotations

import csv
import functools
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import click
import orjson

from fieldhub import __version__
from fieldhub.core import config as configmod
from fieldhub.core.errors import ConfigError, FieldhubError, HubNotRunning

EPILOG_WIDTH = 100


class HubGroup(click.Group):
    """Turns the hub's own errors into one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"fieldhub: config error: {exc}", err=True)
            sys.exit(2)
        except HubNotRunning as exc:
            click.echo(f"fieldhub: {exc}", err=True)
            sys.exit(3)
        except FieldhubError as exc:
            click.echo(f"fieldhub: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def example(text: str) -> Callable:
    """Append an 'Example' section to a command's help."""

    def deco(f: Callable) -> Callable:
        import inspect

        f.__doc__ = inspect.cleandoc(f.__doc__ or "") + "\n\n\b\nExample:\n" + "\n".join(
            "  " + line for line in text.strip().splitlines())
        return f
    return deco


def _parse_set(values: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}", file="command line", key=item,
                              expected="section.key=value")
        out[key.strip()] = value.strip()
    return out


#: command flags that are shorthands for a config key (declared on the command itself)
FLAG_KEYS = {"broker": "mqtt.broker"}


def hub_options(f: Callable) -> Callable:
    """--config, --data-dir and --set on a command; passes ``cfg`` (loaded Config).

    A shorthand flag from ``FLAG_KEYS`` declared on the command (``run --broker``) is
    layered with --set and --data-dir, above the environment and the file."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="TOML config file (default: $FIELDHUB_CONFIG, ./fieldhub.toml, /etc/fieldhub/fieldhub.toml).")
    @click.option("--data-dir", type=click.Path(file_okay=False),
                  help="Data directory (log, store, registry, control socket). [hub.data_dir]")
    @click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override any config key, e.g. --set log.disk_cap=1GiB (repeatable).")
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, data_dir: str | None,
                settings: tuple[str, ...], **kwargs: Any) -> Any:
        overrides: dict[str, Any] = _parse_set(settings)
        if data_dir:
            overrides["hub.data_dir"] = data_dir
        for flag, key in FLAG_KEYS.items():
            value = kwargs.pop(flag, None)
            if value:
                overrides[key] = value
        from fieldhub.hub import load_config

        kwargs["cfg"] = load_config(config_path, overrides)
        return f(*args, **kwargs)
    return wrapper


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def emit_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode())


def local_time(ts_ns: int | None) -> str:
    """Timestamps are UTC inside; operators read local time."""
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


def parse_time(value: str | None, *, now_ns: int | None = None) -> int | None:
    """'1h', '30m', '2d' (ago), epoch seconds, or an ISO 8601 time (local if no zone) -> ns UTC."""
    if value is None:
        return None
    now_ns = now_ns or time.time_ns()
    try:
        return now_ns - int(configmod.parse_duration(value) * 1e9) if value[-1].isalpha() else \
            int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a duration ago (1h, 30m, 2d), epoch seconds or "
                                 "an ISO time (2026-11-30T08:00, local unless a zone is given)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1e9)


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": EPILOG_WIDTH})
@click.version_option(__version__, prog_name="fieldhub")
def main() -> None:
    """fieldhub — telemetry and comms hub of an emergency satellite command vehicle.

    Ingests MQTT, serial and MAVLink devices into a durable log, stores them locally and in
    InfluxDB, relays them to the provincial center. 应急卫星指挥车 现场设备通信枢纽。

    \b
    Example:
      fieldhub init --config fieldhub.toml
      fieldhub run --config fieldhub.toml
      fieldhub status --json
    """


# ----------------------------------------------------------------------------- init / run
@main.command()
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


@main.command()
@hub_options
@click.option("--broker", metavar="mqtt://HOST:PORT", help="MQTT broker to ingest from. [mqtt.broker]")
@example("fieldhub run --config fieldhub.toml --broker mqtt://127.0.0.1:1883")
def run(cfg: configmod.Config) -> None:
    """Run the hub in the foreground until Ctrl-C / SIGTERM, then shut down cleanly."""
    from fieldhub.hub import Hub

    hub = Hub(cfg)
    click.echo(f"fieldhub {__version__}: hub {cfg.hub.id} running, data dir {hub.data_dir}; "
               f"components: {', '.join(c.name for c in hub.components)}. Ctrl-C to stop.", err=True)
    hub.run()
    click.echo("stopped cleanly / 已正常停止", err=True)


# ----------------------------------------------------------------------------- status
@main.command()
@hub_options
@json_option
@example("fieldhub status --data-dir /var/lib/fieldhub --json")
def status(cfg: configmod.Config, as_json: bool) -> None:
    """Devices online/offline by level and kind, consumer backlogs, disk use, last errors.

    Asks the running hub; if none runs, reads the data dir directly.
    """
    from fieldhub.core import control
    from fieldhub.status import collect

    try:
        data = control.call(cfg.data_dir, "status")
    except HubNotRunning:
        data = collect(cfg)
    if as_json:
        emit_json(data)
        return
    from fieldhub.cli.render import print_status

    print_status(data)


# ----------------------------------------------------------------------------- devices
@main.group()
def devices() -> None:
    """The device registry (five administrative levels: 省/市/县/乡镇/村)."""


def _registry(cfg: configmod.Config):
    from fieldhub.core.datadir import REGISTRY_FILE, prepare_data_dir
    from fieldhub.core.profiles import names as known_models
    from fieldhub.core.registry import Registry

    return Registry(prepare_data_dir(cfg.data_dir) / REGISTRY_FILE, known_models())


@devices.command("add")
@click.argument("device_id")
@click.option("--kind", required=True, help="Device kind, e.g. rain_gauge, gnss, drone, sat_phone.")
@click.option("--admin-code", required=True, help="12-digit administrative division code (统计用区划代码).")
@click.option("--model", default="", help="Firmware profile name (see `fieldhub profiles list`).")
@click.option("--unit", default="", help="Owning unit.")
@click.option("--contact", default="", help="Contact person / phone.")
@click.option("--transport", "transport", default="", help='Transport settings as JSON, e.g. \'{"port": "/dev/ttyUSB0"}\'.')
@hub_options
@json_option
@example("fieldhub devices add rg-001 --kind rain_gauge --admin-code 420102001001 --unit 'Village 1'")
def devices_add(cfg, device_id, kind, admin_code, model, unit, contact, transport, as_json) -> None:
    """Register a device."""
    from fieldhub.core.errors import ValidationError
    from fieldhub.core.registry import Device

    try:
        t = orjson.loads(transport) if transport else {}
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"--transport is not JSON: {exc}") from None
    dev = _registry(cfg).add(Device(device_id, kind, admin_code, model, unit, contact, t))
    if as_json:
        emit_json(dev.to_dict())
    else:
        click.echo(f"added {dev.id} ({dev.kind}, {dev.level} {dev.admin_code})")


@devices.command("list")
@click.option("--kind", help="Only this kind.")
@click.option("--level", type=click.Choice(["province", "city", "county", "township", "village"]))
@hub_options
@json_option
@example("fieldhub devices list --kind rain_gauge --json")
def devices_list(cfg, kind, level, as_json) -> None:
    """List registered devices."""
    devs = [d for d in _registry(cfg).all()
            if (not kind or d.kind == kind) and (not level or d.level == level)]
    if as_json:
        emit_json([d.to_dict() for d in devs])
        return
    from fieldhub.cli.render import table

    table(["id", "kind", "model", "level", "admin code", "unit"],
          [[d.id, d.kind, d.model, d.level, d.admin_code, d.unit] for d in devs],
          title=f"{len(devs)} devices")


@devices.command("show")
@click.argument("device_id")
@hub_options
@json_option
@example("fieldhub devices show rg-001")
def devices_show(cfg, device_id, as_json) -> None:
    """Show one device."""
    dev = _registry(cfg).get(device_id)
    if dev is None:
        raise FieldhubError(f"no device {device_id} / 设备不存在")
    if as_json:
        emit_json(dev.to_dict())
        return
    for key, value in dev.to_dict().items():
        click.echo(f"{key:>11}: {local_time(value) if key == 'created' else value}")


@devices.command("remove")
@click.argument("device_id")
@hub_options
@example("fieldhub devices remove rg-001")
def devices_remove(cfg, device_id) -> None:
    """Remove a device from the registry (its records stay)."""
    if not _registry(cfg).remove(device_id):
        raise FieldhubError(f"no device {device_id} / 设备不存在")
    click.echo(f"removed {device_id}")


@devices.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Overwrite devices that already exist.")
@hub_options
@example("fieldhub devices import devices.csv   # columns: id,kind,admin_code,model,unit,contact,transport")
def devices_import(cfg, csv_file, replace) -> None:
    """Import devices from CSV; the whole file is validated first, so a bad row changes nothing."""
    n = _registry(cfg).import_csv(Path(csv_file).read_text(encoding="utf-8-sig"), replace=replace,
                                  source=csv_file)
    click.echo(f"imported {n} devices")


@devices.command("export")
@click.option("--out", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@hub_options
@example("fieldhub devices export --out devices.csv")
def devices_export(cfg, out) -> None:
    """Export the registry as CSV (the format `devices import` reads)."""
    text = _registry(cfg).export_csv()
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


# ----------------------------------------------------------------------------- query
@main.command()
@click.argument("kind", required=False)
@click.option("--device", help="Only this device id.")
@click.option("--since", help="From: a duration ago (1h, 30m, 2d), epoch seconds or ISO time.")
@click.option("--until", help="Up to (exclusive), same forms as --since.")
@click.option("--limit", type=int, help="At most this many records.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: id, kind, device_id, ts (ns), time (UTC), fields..., tags.")
@hub_options
@json_option
@example("fieldhub query position --device gnss-1 --since 1h --json")
def query(cfg, kind, device, since, until, limit, as_csv, as_json) -> None:
    """Read records from the local store by kind, device and time range.

    --json prints one JSON object per record, one per line.
    """
    from fieldhub.core.datadir import STORE_FILE
    from fieldhub.sinks.store import LocalStore

    store = LocalStore(cfg.data_dir / STORE_FILE, readonly=True)
    recs = store.query(kind, device=device, since=parse_time(since), until=parse_time(until), limit=limit)
    if as_json:
        out = sys.stdout.buffer
        for r in recs:
            out.write(r.to_json() + b"\n")
        out.flush()
        return
    if as_csv:
        rows = list(recs)
        names = sorted({k for r in rows for k in r.fields})
        w = csv.writer(sys.stdout)
        w.writerow(["id", "kind", "device_id", "ts", "time_utc", *names, "tags"])
        for r in rows:
            w.writerow([r.id, r.kind, r.device_id, r.ts,
                        datetime.fromtimestamp(r.ts / 1e9, tz=timezone.utc).isoformat(),
                        *[r.fields.get(n, "") for n in names], orjson.dumps(r.tags).decode()])
        return
    from fieldhub.cli.render import table

    rows = [[local_time(r.ts), r.kind, r.device_id, r.priority.label,
             " ".join(f"{k}={v}" for k, v in r.fields.items())] for r in recs]
    table(["time (local)", "kind", "device", "class", "fields"], rows, title=f"{len(rows)} records")


# ----------------------------------------------------------------------------- quarantine
@main.group()
def quarantine() -> None:
    """The dead-letter area: what could not be admitted, and why (隔离区)."""


@quarantine.command("list")
@click.option("--source", help="Only from this source (mqtt, serial:nmea, influx...).")
@click.option("--state", default="held", show_default=True, type=click.Choice(["held", "readmitted", "all"]))
@click.option("--limit", default=100, show_default=True)
@hub_options
@json_option
@example("fieldhub quarantine list --source mqtt --json")
def quarantine_list(cfg, source, state, limit, as_json) -> None:
    """List quarantined items with their reason."""
    from fieldhub.core.quarantine import list_items

    items = list_items(cfg.data_dir, source=source, state=state, limit=limit)
    if as_json:
        emit_json(items)
        return
    from fieldhub.cli.render import table

    table(["qid", "time (local)", "source", "device", "reason", "payload"],
          [[i["qid"], local_time(i["ts"]), i["source"], i["device_id"] or "-", i["reason"],
            i["payload_preview"]] for i in items], title=f"{len(items)} quarantined ({state})")


@main.command()
@click.option("--level", type=click.Choice(["info", "warning", "error"]), default="info", show_default=True,
              help="Lowest level shown.")
@click.option("--limit", default=50, show_default=True, help="How many of the latest entries.")
@hub_options
@json_option
@example("fieldhub events --level warning --limit 20")
def events(cfg, level, limit, as_json) -> None:
    """The operator log: what the hub did and what went wrong (操作日志), newest last."""
    from fieldhub.core.datadir import OPLOG_FILE
    from fieldhub.core.oplog import LEVELS, tail

    entries = tail(cfg.data_dir / OPLOG_FILE, limit, LEVELS[LEVELS.index(level):])
    if as_json:
        out = sys.stdout.buffer
        for e in entries:
            out.write(orjson.dumps(e) + b"\n")
        out.flush()
        return
    for e in entries:
        click.echo(f"{local_time(e.get('ts'))} {e.get('level', '?'):<7} {e.get('event', '')}: "
                   f"{e.get('message', '')}")
        if e.get("message_zh") and e.get("message_zh") != e.get("message"):
            click.echo(f"{'':>33}{e['message_zh']}")


@main.group()
def consumers() -> None:
    """The durable log's consumers (store, influx, uplink...) and their cursors."""


@consumers.command("list")
@hub_options
@json_option
@example("fieldhub consumers list --json")
def consumers_list(cfg, as_json) -> None:
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
def consumers_drop(cfg, name) -> None:
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
    click.echo(f"dropped consumer {name}; what only it still needed is compacted away")


# ----------------------------------------------------------------------------- replay / sim
@main.command()
@click.argument("driver")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--summary", is_flag=True, help="Only counts: frames, records, bad_frames, by_kind.")
@click.option("--device", default="replay", show_default=True, help="Device id to put on records.")
@json_option
@example("fieldhub replay nmea ../shared/fixtures/nmea/gpsd_beidou-bd.log --summary --json")
def replay(driver, file, summary, device, as_json) -> None:
    """Decode a capture file with a driver (no hub needed).

    --json prints one record per line; --summary --json prints one object with frames,
    records, bad_frames and by_kind.
    """
    from fieldhub.cli.replay import replay_file

    result = replay_file(driver, Path(file), device_id=device,
                         on_record=(lambda r: sys.stdout.buffer.write(r.to_json() + b"\n"))
                         if as_json and not summary else None)
    if summary or not as_json:
        if as_json:
            emit_json(result)
        else:
            click.echo(f"{file}: {result['frames']} frames, {result['records']} records, "
                       f"{result['bad_frames']} bad frames")
            for kind, n in sorted(result["by_kind"].items()):
                click.echo(f"  {kind:<20} {n}")


@main.group()
def sim() -> None:
    """Device and link simulators (real MQTT clients, real pseudo-terminals, real sockets)."""


# ----------------------------------------------------------------------------- demo
@main.command()
@click.option("--seconds", default=30, show_default=True, help="How long to run (0 = until Ctrl-C).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Keep the demo's data here (default: a temp dir).")
@json_option
@example("fieldhub demo --seconds 20")
def demo(seconds, data_dir, as_json) -> None:
    """Run the hub with every simulator on the embedded defaults and a private broker."""
    from fieldhub.cli.demo import run_demo

    summary = run_demo(seconds=seconds, data_dir=Path(data_dir) if data_dir else None, live=not as_json)
    if as_json:
        emit_json(summary)


# ----------------------------------------------------------------------------- feature commands
# Each feature keeps its commands in fieldhub/cli_<feature>.py with a register(main, sim) function
# and adds one line in its slot below.

# MQTT: quarantine readmit, provision, sim village (issue 3)
from fieldhub.cli.mqtt import register as _register_mqtt; _register_mqtt(main, sim)  # noqa: E402,E702

# serial: profiles, sim serial, bd/tiantong send (issue 4)
from fieldhub.cli.serial import register as _register_serial; _register_serial(main, sim)  # noqa: E402,E702

# drones: drone, sim drone (issue 5)
from fieldhub.cli.mavlink import register as _register_mavlink; _register_mavlink(main, sim)  # noqa: E402,E702

# InfluxDB: influx check (issue 6)
from fieldhub.cli.influx import register as _register_influx; _register_influx(main, sim)  # noqa: E402,E702

# uplink: uplink status, sim link, center (issue 7)
from fieldhub.cli.uplink import register as _register_uplink; _register_uplink(main, sim)  # noqa: E402,E702


if __name__ == "__main__":
    main()
