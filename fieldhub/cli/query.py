"""``fieldhub query``: records from the local store by kind, device and time range."""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
import orjson

from fieldhub.cli.common import emit_json_lines, example, hub_options, json_option, local_time, parse_time
from fieldhub.core.config import Config

if TYPE_CHECKING:
    from fieldhub.core.records import Record


@click.command("query")
@click.argument("kind", required=False)
@click.option("--device", help="Only this device id.")
@click.option("--since", help="From: a duration ago (1h, 30m, 2d), epoch seconds or ISO time.")
@click.option("--until", help="Up to (exclusive), same forms as --since.")
@click.option("--limit", type=int, help="At most this many records.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: id, kind, device_id, ts (ns), time (UTC), fields..., tags.")
@hub_options
@json_option
@example("fieldhub query position --device gnss-1 --since 1h --json")
def query(cfg: Config, kind: str | None, device: str | None, since: str | None, until: str | None,
          limit: int | None, as_csv: bool, as_json: bool) -> None:
    """Read records from the local store by kind, device and time range.

    --json prints one JSON object per record, one per line.
    """
    from fieldhub.core.datadir import STORE_FILE
    from fieldhub.sinks.store import LocalStore

    start, end = parse_time(since), parse_time(until)
    if start is not None and end is not None and end <= start:
        raise click.UsageError(f"--until ({until}) is not after --since ({since}): the range is empty "
                               f"/ 结束时间不晚于开始时间")
    store = LocalStore(cfg.data_dir / STORE_FILE, readonly=True)
    found = store.query(kind, device=device, since=start, until=end, limit=limit)
    first = next(found, None)  # the rest still streams
    recs: Iterable[Record] = itertools.chain([first], found) if first is not None else ()
    if first is None and kind:
        kinds = store.counts()
        if kind not in kinds:
            click.echo(f"fieldhub: no records of kind {kind!r} in the local store; kinds held: "
                       f"{', '.join(sorted(kinds)) or 'none yet'} / 本地存储中没有此类记录", err=True)
    if as_json:
        emit_json_lines(r.to_json() for r in recs)
    elif as_csv:
        _write_csv(list(recs))
    else:
        from fieldhub.cli.render import table

        rows = [[local_time(r.ts), r.kind, r.device_id, r.priority.label,
                 " ".join(f"{k}={v}" for k, v in r.fields.items())] for r in recs]
        table(["time (local)", "kind", "device", "class", "fields"], rows, title=f"{len(rows)} records")


def _write_csv(rows: list[Record]) -> None:
    """id, kind, device_id, ts (ns), time_utc, one column per field name (sorted), tags as JSON."""
    names = sorted({k for r in rows for k in r.fields})
    w = csv.writer(sys.stdout)
    w.writerow(["id", "kind", "device_id", "ts", "time_utc", *names, "tags"])
    for r in rows:
        w.writerow([r.id, r.kind, r.device_id, r.ts,
                    datetime.fromtimestamp(r.ts / 1e9, tz=UTC).isoformat(),
                    *[r.fields.get(n, "") for n in names], orjson.dumps(r.tags).decode()])
