"""``fieldhub devices add|list|show|remove|import|export``: the device registry."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time, open_registry
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError


@click.group("devices")
def devices() -> None:
    """The device registry (five administrative levels: 省/市/县/乡镇/村)."""


@devices.command("add")
@click.argument("device_id")
@click.option("--kind", required=True, help="Device kind, e.g. rain_gauge, gnss, drone, sat_phone.")
@click.option("--admin-code", required=True, help="12-digit administrative division code (统计用区划代码).")
@click.option("--model", default="", help="Firmware profile name (see `fieldhub profiles list`).")
@click.option("--unit", default="", help="Owning unit.")
@click.option("--contact", default="", help="Contact person / phone.")
@click.option("--transport", "transport", default="",
              help='Transport settings as JSON, e.g. \'{"port": "/dev/ttyUSB0"}\'.')
@hub_options
@json_option
@example("fieldhub devices add rg-001 --kind rain_gauge --admin-code 420102001001 --unit 'Village 1'")
def devices_add(cfg: Config, device_id: str, kind: str, admin_code: str, model: str, unit: str, contact: str,
                transport: str, as_json: bool) -> None:
    """Register a device."""
    from fieldhub.core.errors import ValidationError
    from fieldhub.core.registry import Device

    try:
        t = orjson.loads(transport) if transport else {}
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"--transport is not JSON: {exc}") from None
    dev = open_registry(cfg).add(Device(device_id, kind, admin_code, model, unit, contact, t))
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
def devices_list(cfg: Config, kind: str | None, level: str | None, as_json: bool) -> None:
    """List registered devices."""
    devs = [d for d in open_registry(cfg).all()
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
def devices_show(cfg: Config, device_id: str, as_json: bool) -> None:
    """Show one device."""
    dev = open_registry(cfg).get(device_id)
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
def devices_remove(cfg: Config, device_id: str) -> None:
    """Remove a device from the registry (its records stay)."""
    if not open_registry(cfg).remove(device_id):
        raise FieldhubError(f"no device {device_id} / 设备不存在")
    click.echo(f"removed {device_id}")


@devices.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Overwrite devices that already exist.")
@hub_options
@example("fieldhub devices import devices.csv   # columns: id,kind,admin_code,model,unit,contact,transport")
def devices_import(cfg: Config, csv_file: str, replace: bool) -> None:
    """Import devices from CSV; the whole file is validated first, so a bad row changes nothing."""
    n = open_registry(cfg).import_csv(Path(csv_file).read_bytes(), replace=replace,
                                      source=csv_file)
    click.echo(f"imported {n} devices")


@devices.command("export")
@click.option("--out", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@hub_options
@example("fieldhub devices export --out devices.csv")
def devices_export(cfg: Config, out: str | None) -> None:
    """Export the registry as CSV (the format `devices import` reads).

    A model, unit or contact cell starting with =, +, -, @ or a tab would run as a formula in
    a spreadsheet: it is written with a leading ' (which `devices import` removes again).
    """
    text = open_registry(cfg).export_csv()
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
