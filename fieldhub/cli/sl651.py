"""CLI for SL 651-2014 hydrological stations: ``fieldhub sl651 stations``."""

from __future__ import annotations

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError, HubNotRunning


@click.group("sl651")
def sl651() -> None:
    """SL 651-2014 hydrological stations (水文遥测站) reporting over TCP."""


@sl651.command("stations")
@hub_options
@json_option
@example("fieldhub sl651 stations --json")
def stations(cfg: Config, as_json: bool) -> None:
    """Stations the running hub has heard since it started: device, channel, last report,
    battery voltage, reports, stored, duplicates, confirms, keep-alives and bad frames."""
    from fieldhub.core import control

    try:
        rows = control.call(cfg.data_dir, "sl651.stations", {})
    except HubNotRunning:
        raise HubNotRunning("no hub is running: station counters live in the running hub "
                            "(start it with `fieldhub run`) / hub 未运行，测站状态仅在运行中的 hub 内") from None
    except FieldhubError as exc:
        if "unknown command" not in str(exc):
            raise
        raise FieldhubError("the running hub has no SL651 server ([sl651] enabled = false) "
                            "/ 运行中的 hub 未启用 SL651") from None
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no SL651 station has reported yet / 尚无测站上报")
        return
    from fieldhub.cli.render import table

    table(["station", "device", "channel", "last report", "battery V", "reports", "stored", "dup",
           "confirms", "keep-alive", "bad"],
          [[r["station"], r["device_id"] or "(unknown)", r["channel"], local_time(r["last_report_ns"]),
            "-" if r["battery_v"] is None else r["battery_v"], r["reports"], r["stored"], r["duplicates"],
            r["confirms"], r["keepalives"], r["bad_frames"]] for r in rows])
