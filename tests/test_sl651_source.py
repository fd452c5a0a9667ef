"""The [sl651] station server on real sockets: reports stored once, confirms only after durability,
resends deduplicated, keep-alives and invalid frames unanswered, unknown stations quarantined."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from drivers import sl651
from fieldhub.core.datadir import LOG_FILE
from fieldhub.core.logview import LogView
from fieldhub.core.registry import Device
from fieldhub.hub import Hub, load_config

CONNECTIONS, PER_CONN, REPORTS = 20, 10, 3      # 200 stations, several on each connection


def station(n: int) -> str:
    return f"00{n:08d}"


def report(st: str, serial: int, hour: int, level: int, *, fc: int = 0x32, sent: str = "") -> bytes:
    """A 32 timed report: F1F1 station (type H), F0F0 time, Z and VT (HEX/BCD, Table 20 layout)."""
    body = (serial.to_bytes(2, "big") + bytes.fromhex(sent or f"2507{15 + hour // 24:02d}{hour % 24:02d}0005")
            + bytes.fromhex("F1F1" + st + "48F0F0") + bytes.fromhex(f"2507{15 + hour // 24:02d}{hour % 24:02d}00")
            + bytes.fromhex(f"3923{level:08d}") + bytes.fromhex("38121215"))
    return sl651.build_frame(center=1, station=st, password=0, fc=fc, body=body, end=sl651.ETX)


class Dtu:
    """A station DTU: one TCP connection, frames out, confirms read back through the driver's framer."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.framer = sl651.Sl651Framer()
        self.pending: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def reply(self, timeout: float = 10.0) -> bytes | None:
        end = time.monotonic() + timeout
        while not self.pending:
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            if not data:
                return None
            self.pending += [f.raw for f in self.framer.feed(data) if f.ok]
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hub(tmp_path: Path):
    data = tmp_path / "data"
    cfg = load_config(None, {"hub.data_dir": str(data), "store.enabled": False, "sl651.enabled": True,
                             "sl651.listen": "127.0.0.1:0"}, env={})
    h = Hub(cfg)
    for i in range(CONNECTIONS * PER_CONN):
        h.registry.add(Device(f"wl-{i:03d}", "water_level", "420102001001",
                              transport={"sl651": station(i), **({"confirm": "ESC"} if i == 1 else {})}))
    h.start()
    yield h
    h.stop()


def _server(hub: Hub):
    return next(c for c in hub.components if c.name == "sl651")


def _hydro(view: LogView) -> list:
    return [e.record for e in view.read({}, limit=100_000) if e.record.kind == "hydro"]


def test_confirm_only_after_the_report_is_durable(hub: Hub) -> None:
    srv = _server(hub)
    view = LogView.open(hub.data_dir / LOG_FILE)
    dtu = Dtu(srv.address)
    try:
        for k in range(5):
            before = view.record_count()
            frame = report(station(0), 100 + k, k, 1000 + k)
            dtu.send(frame)
            reply = dtu.reply()
            assert reply is not None, "no confirm"
            # at the moment the confirm arrives, another connection already sees the record committed
            assert view.record_count() == before + 1
            up, down = sl651.decode_header(frame), sl651.decode_header(reply)
            assert (down.fc, down.body[:2], down.end, down.uplink) == (0x32, up.body[:2], sl651.EOT, False)
            assert len(reply) == 25
        # a station configured for ESC (stay online) gets ESC
        dtu.send(report(station(1), 7, 0, 5))
        reply = dtu.reply()
        assert reply is not None and sl651.decode_header(reply).end == sl651.ESC
    finally:
        dtu.close()
        view.close()


def test_200_stations_every_report_stored_once_and_resends_deduplicated(hub: Hub) -> None:
    srv = _server(hub)
    errors: list[str] = []
    confirms: Counter[str] = Counter()

    def run(c: int, phase: str) -> None:
        dtu = Dtu(srv.address)
        try:
            for k in range(REPORTS):
                for j in range(PER_CONN):
                    n = c * PER_CONN + j
                    if phase == "first":
                        frame = report(station(n), (65534 + k) % 65535 + 1, k, n * 10 + k)
                    else:
                        # the station rebooted: serial restarted at 1 and the send time is new; same observation
                        frame = report(station(n), 1 + k, k, n * 10 + k, sent=f"250716{k:02d}0000")
                    dtu.send(frame)
                    reply = dtu.reply()
                    if reply is None or sl651.decode_header(reply).body[:2] != frame[14:16]:
                        errors.append(f"{phase}: station {n} report {k}: no matching confirm")
                    else:
                        confirms[phase] += 1
        finally:
            dtu.close()

    for phase in ("first", "resend"):
        threads = [threading.Thread(target=run, args=(c, phase)) for c in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:5]
    total = CONNECTIONS * PER_CONN * REPORTS
    assert confirms == {"first": total, "resend": total}
    with LogView.open(hub.data_dir / LOG_FILE) as view:
        recs = _hydro(view)
    assert len(recs) == total and len({r.id for r in recs}) == total
    per_station = Counter(r.device_id for r in recs)
    assert set(per_station.values()) == {REPORTS} and len(per_station) == CONNECTIONS * PER_CONN
    assert all(r.tags["channel"] == "tcp" and r.tags["admin_code"] == "420102001001" for r in recs)
    st = srv.status()
    assert st["stored"] == total and st["duplicates"] == total and st["bad_frames"] == 0
    stations = {s["station"]: s for s in srv.station_list()}
    assert stations[station(5)]["reports"] == 2 * REPORTS and stations[station(5)]["battery_v"] == 12.15
    assert stations[station(5)]["duplicates"] == REPORTS and stations[station(5)]["device_id"] == "wl-005"


def test_keepalive_and_invalid_frames_unanswered_unknown_quarantined(hub: Hub) -> None:
    srv = _server(hub)
    dtu = Dtu(srv.address)
    try:
        keep = sl651.build_frame(center=1, station=station(3), password=0, fc=0x2F,
                                 body=bytes.fromhex("0001250715080000"), end=sl651.ETX)
        dtu.send(keep)
        assert dtu.reply(timeout=1.0) is None
        bad = bytearray(report(station(3), 9, 1, 42))
        bad[-1] ^= 0x55
        dtu.send(bytes(bad) + b"\x7e\x7e\x00garbage")
        assert dtu.reply(timeout=1.0) is None
        # the connection still works after the noise
        dtu.send(report(station(3), 10, 2, 43))
        assert dtu.reply() is not None
        # an unregistered station: confirmed once its report is durable in quarantine, with the decoded content
        dtu.send(report("0099999999", 1, 0, 77))
        assert dtu.reply() is not None
    finally:
        dtu.close()
    st = srv.status()
    assert st["keepalives"] == 1 and st["bad_frames"] == 1 and st["unknown"] == 1
    with LogView.open(hub.data_dir / LOG_FILE) as view:
        q = view.quarantine(source="sl651")
        assert len(_hydro(view)) == 1
    reasons = sorted(i.reason for i in q)
    assert reasons == ["bad frame: bad CRC", "unknown station"]
    unknown = next(i for i in q if i.reason == "unknown station")
    assert unknown.meta["station"] == "0099999999"
    assert unknown.meta["records"][0]["fields"]["Z_m"] == 0.077


def test_idle_connection_closed(tmp_path: Path) -> None:
    cfg = load_config(None, {"hub.data_dir": str(tmp_path / "d"), "store.enabled": False, "sl651.enabled": True,
                             "sl651.listen": "127.0.0.1:0", "sl651.idle_timeout": "1s"}, env={})
    h = Hub(cfg)
    h.start()
    try:
        srv = _server(h)
        sock = socket.create_connection(srv.address, timeout=5)
        sock.settimeout(5)
        t0 = time.monotonic()
        assert sock.recv(10) == b""          # closed by the hub
        assert 0.9 < time.monotonic() - t0 < 4.5
        assert srv.status()["idle_closed"] == 1
        sock.close()
    finally:
        h.stop()


def test_cli_stations(hub: Hub) -> None:
    from tests.conftest import run_cli

    srv = _server(hub)
    dtu = Dtu(srv.address)
    try:
        dtu.send(report(station(4), 3, 1, 1234))
        assert dtu.reply() is not None
    finally:
        dtu.close()
    proc = run_cli("sl651", "stations", "--json", "--data-dir", str(hub.data_dir), check=True)
    (row,) = __import__("json").loads(proc.stdout)
    assert row["station"] == station(4) and row["device_id"] == "wl-004" and row["battery_v"] == 12.15
    assert (row["reports"], row["stored"], row["confirms"], row["channel"]) == (1, 1, 1, "tcp")
    text = run_cli("sl651", "stations", "--data-dir", str(hub.data_dir), check=True, env={"COLUMNS": "200"}).stdout
    assert station(4) in text and "wl-004" in text
