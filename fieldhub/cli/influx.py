"""``fieldhub influx check``: the InfluxDB sink's server, credentials and write permission."""

from __future__ import annotations

import sys

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option
from fieldhub.core.config import Config


@click.group("influx")
def influx() -> None:
    """The InfluxDB sink: check the server (schema: docs/influxdb.md) / 时序数据库。"""


@influx.command("check")
@click.option("--no-write", is_flag=True, help="Skip the test write (only connect and log in).")
@hub_options
@json_option
@example("fieldhub influx check --config fieldhub.toml\n"
         "fieldhub influx check --set influx.url=http://10.0.0.5:8086 --set influx.mode=v1 --json")
def influx_check(cfg: Config, no_write: bool, as_json: bool) -> None:
    """Test connectivity, credentials and write permission of the configured InfluxDB.

    Writes one point to measurement fieldhub_check (unless --no-write), prints a diagnosis
    and exits 1 when something is wrong.
    """
    from fieldhub.sinks.influx.check import check

    report = check(cfg.section("influx"), cfg.hub.id, write=not no_write)
    if as_json:
        emit_json(report)
    else:
        for step in report["steps"]:
            mark = "ok  " if step["ok"] else "FAIL"
            click.echo(f"  [{mark}] {step['name']:<12} {step['detail']}")
        click.echo(("OK: " if report["ok"] else "PROBLEM: ") + report["diagnosis"])
        click.echo("    " + report.get("diagnosis_zh", ""))
    if not report["ok"]:
        sys.exit(1)
