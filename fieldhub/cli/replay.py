"""Decode a capture file with a driver: the main regression test and an operator tool."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import drivers
from drivers.base import ParseContext

from fieldhub.core.errors import FieldhubError, ProtocolError
from fieldhub.core.records import Record


def replay_file(driver_name: str, path: Path, *, device_id: str = "replay",
                on_record: Callable[[Record], None] | None = None,
                profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts of frames (good), records, bad_frames and records by kind."""
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
    for chunk in driver.capture_chunks(path):
        for frame in framer.feed(chunk):
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
