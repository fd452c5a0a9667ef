"""Bytes per field value: our batch format vs JSON lines and InfluxDB line protocol, each zstd-compressed.

    python bench/uplink_bytes.py [--json]

Same records for every format (village telemetry: 20 stations x 6 fields at 1 Hz; drone
positions: 2 drones x 6 fields at 5 Hz; both with sensor noise), 60 s and 600 s windows,
zstd levels 3 and 19. Also the size of an alarm with position and MAC as a Beidou short message.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import zstandard  # noqa: E402

from fieldhub.sinks.influx.lineproto import Encoder  # noqa: E402
from fieldhub.uplink import shortmsg  # noqa: E402
from fieldhub.uplink.codec import Batch, decode_batch, encode_batch  # noqa: E402
from simulators.uplink_load import alarm, drone_positions, village_telemetry  # noqa: E402

T0 = 1_780_000_000_000_000_000


def measure(name: str, recs: list, level: int) -> dict:
    values = sum(len(r.fields) for r in recs)
    z = zstandard.ZstdCompressor(level=level)
    js = z.compress(b"\n".join(r.to_json() for r in recs))
    enc = Encoder("vehicle-01", same_timestamp="overwrite")  # the InfluxDB sink's line protocol, times as they are
    lp = z.compress(b"\n".join(enc.encode(r) for r in recs))
    t = time.perf_counter()
    ours = encode_batch(Batch("vehicle-01", 1, T0, {4: (0, len(recs))}, recs), compressor=z)
    enc_ms = (time.perf_counter() - t) * 1000
    assert sorted(decode_batch(ours).records, key=lambda r: r.id) == sorted(recs, key=lambda r: r.id)
    return {"data": name, "zstd": level, "records": len(recs), "field_values": values,
            "json_zstd": round(len(js) / values, 3), "lineproto_zstd": round(len(lp) / values, 3),
            "ours": round(len(ours) / values, 3), "ours_vs_lineproto": round(len(ours) / len(lp), 3),
            "encode_ms": round(enc_ms, 1)}


def main() -> None:
    rows = []
    for window in (60, 600):
        sets = {f"village telemetry {window}s": village_telemetry(20, window, t0_ns=T0),
                f"drone positions {window}s": drone_positions(2, window, t0_ns=T0)}
        for name, recs in sets.items():
            for level in (3, 19):
                rows.append(measure(name, recs, level))
    msg = shortmsg.encode(alarm("geo-monitor-17", T0, 1), "vehicle-01", bytes(32), shortmsg.budget_bytes(3))
    if "--json" in sys.argv:
        print(orjson.dumps({"rows": rows, "alarm_short_message_bytes": len(msg)}).decode())
        return
    print(f"{'data':<26}{'zstd':>5}{'values':>8}{'JSON':>8}{'LP':>8}{'ours':>8}{'ours/LP':>9}  (bytes per field value)")
    for r in rows:
        print(f"{r['data']:<26}{r['zstd']:>5}{r['field_values']:>8}{r['json_zstd']:>8}{r['lineproto_zstd']:>8}"
              f"{r['ours']:>8}{r['ours_vs_lineproto']:>9}")
    print(f"alarm with position + 8-byte MAC as a Beidou short message: {len(msg)} bytes (level-3 card: 78)")


if __name__ == "__main__":
    main()
