"""``fieldhub quarantine list``: the dead-letter area (``quarantine readmit`` is MQTT's, in mqtt.py)."""

from __future__ import annotations

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time
from fieldhub.core.config import Config


@click.command("list")
@click.option("--source", help="Only from this source (mqtt, serial:nmea, influx...).")
@click.option("--state", default="held", show_default=True, type=click.Choice(["held", "readmitted", "all"]))
@click.option("--limit", default=100, show_default=True)
@hub_options
@json_option
@example("fieldhub quarantine list --source mqtt --json")
def quarantine_list(cfg: Config, source: str | None, state: str, limit: int, as_json: bool) -> None:
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
