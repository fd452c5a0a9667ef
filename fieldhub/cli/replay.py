"""``fieldhub replay``: decode a capture file with a driver; the main regression test and an operator tool."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldhub.cli.common import emit_json, example, json_option
from fieldhub.core.errors import FieldhubError, ProtocolError

if TYPE_CHECKING:  # the drivers load when a file is replayed, not with every command
    from drivers.base import Frame
    from fieldhub.core.records import Record


@click.command("replay")
@click.argument("driver")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--summary", is_flag=True, help="Only counts: frames, records, bad_frames, by_kind.")
@click.option("--device", default="replay", show_default=True, help="Device id to put on records.")
@json_option
@example("fieldhub replay nmea ../shared/fixtures/nmea/gpsd_beidou-bd.log --summary --json")
def replay(driver: str, file: str, summary: bool, device: str, as_json: bool) -> None:
    """Decode a capture file with a driver (no hub needed).

    --json prints one record per line; --summary --json prints one object with frames,
    records, bad_frames and by_kind.
    """
    result = replay_file(driver, Path(file), device_id=device,
                         on_record=_print_record if as_json and not summary else None)
    if as_json and not summary:
        return
    if as_json:
        emit_json(result)
        return
    click.echo(f"{file}: {result['frames']} frames, {result['records']} records, "
               f"{result['bad_frames']} bad frames")
    for kind, n in sorted(result["by_kind"].items()):
        click.echo(f"  {kind:<20} {n}")


def _print_record(r: Record) -> None:
    sys.stdout.buffer.write(r.to_json() + b"\n")


def replay_file(driver_name: str, path: Path, *, device_id: str = "replay",
                on_record: Callable[[Record], None] | None = None,
                profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts of frames (good), records, bad_frames and records by kind."""
    import drivers
    from drivers.base import ParseContext

    try:
        driver = drivers.get(driver_name)
    except KeyError as exc:
        raise FieldhubError(str(exc.args[0])) from None
    framer = driver.framer()
    parser = driver.parser(profile or {})
    frames = bad = records = 0
    by_kind: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    now = time.time_ns()
    source = f"replay:{driver_name}"

    def frames_of() -> Iterator[Frame]:
        for chunk in driver.capture_chunks(path):
            yield from framer.feed(chunk)
        yield from framer.flush()  # the last sentence may have no line end

    for frame in frames_of():
        if not frame.ok:
            bad += 1
            errors[frame.error or "bad frame"] += 1
            continue
        frames += 1
        ctx = ParseContext(device_id=device_id, now_ns=frame.ts or now, source=source)
        try:
            out = parser.parse(frame, ctx)
        except ProtocolError as exc:
            errors[str(exc)] += 1
            bad += 1
            frames -= 1
            continue
        for r in out:
            records += 1
            by_kind[r.kind] += 1
            if on_record is not None:
                on_record(r)
    return {"file": str(path), "driver": driver_name, "frames": frames, "records": records,
            "bad_frames": bad, "by_kind": dict(by_kind), "errors": dict(errors.most_common(20))}
