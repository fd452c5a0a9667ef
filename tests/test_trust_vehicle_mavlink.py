"""Drone links: one forged MAVLink 2 packet must not cut off a signing drone (real UDP, the drone
simulator, a real hub). The signing state moves only after a signature verifies."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.mavlink import check_signature, signer
from fieldhub.hub import Hub, load_config
from fieldhub.sources.mavlink.config import key_bytes
from fieldhub.sources.mavlink.drones import DroneHub
from simulators.drone import DroneSwarm, free_udp_port
from tests.test_drones_signing import wait_for

KEY = "field key one"
MAX_TS = 2**48 - 1


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., tuple[Hub, DroneHub]]]:
    hubs: list[Hub] = []

    def make(**mavlink: Any) -> tuple[Hub, DroneHub]:
        overrides = {"hub.data_dir": str(tmp_path / f"data{len(hubs)}"), "store.enabled": False}
        overrides.update({f"mavlink.{k}": v for k, v in mavlink.items()})
        hub = Hub(load_config(None, overrides, env={}))
        hub.start()
        hubs.append(hub)
        return hub, next(c for c in hub.components if c.name == "drones")
    yield make
    for h in hubs:
        h.stop()


def _forged(sysid: int, compid: int, link_id: int = 0) -> bytes:
    """A STATUSTEXT signed with the wrong key, carrying the largest signing timestamp there is."""
    wrong = signer(key_bytes("not the key"), sysid, compid, link_id=link_id)
    wrong.signing.timestamp = MAX_TS
    buf = bytes(wrong.statustext_encode(2, b"FORGED max timestamp").pack(wrong))
    assert int.from_bytes(buf[-12:-6], "little") == MAX_TS
    return buf


def test_forged_max_timestamp_does_not_cut_off_a_signing_drone(make_hub) -> None:
    port = free_udp_port()
    hub, drones = make_hub(endpoints=[f"udpin:127.0.0.1:{port}"], signing_keys={"drone-1": KEY})
    swarm = DroneSwarm(1, f"udpout:127.0.0.1:{port}", keys={1: key_bytes(KEY)}, gps_loss=False, rate_hz=10)
    swarm.start()
    try:
        wait_for(lambda: drones.drones.get(1) and drones.drones[1].rx > 10, what="signed traffic")
        d1 = drones.drones[1]
        assert d1.counts["bad_signature"] == 0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # the simulator signs as component 1 on link 0: the forgery claims that very stream
        for link_id in (0, 1, 2):
            sock.sendto(_forged(1, 1, link_id), ("127.0.0.1", port))
        sock.close()
        wait_for(lambda: d1.counts["bad_signature"] >= 3, what="the forgeries dropped")
        rx = d1.rx
        # genuine traffic goes on being accepted; nothing genuine is taken for a replay
        wait_for(lambda: d1.rx > rx + 30, what="genuine packets after the forgery")
        assert d1.counts["bad_signature"] == 3 and d1.online
        # and the hub's commands still reach the drone (its own signing state untouched too)
        assert drones.command("drone-1", "mode", ["LOITER"])["accepted"]
        assert swarm.drones[1].mode_name == "LOITER"
    finally:
        swarm.stop()


def test_drone_side_check_is_not_poisoned_by_a_forgery_either() -> None:
    """The check the simulator (and the hub) share: a forged packet moves no state; genuine ones
    still pass; a genuine packet replayed does not."""
    verifier = signer(key_bytes(KEY), 1, 1)
    genuine = signer(key_bytes(KEY), 255, 190)
    forged = _forged(255, 190)
    state_before = dict(verifier.signing.stream_timestamps), verifier.signing.timestamp
    assert not check_signature(verifier, forged, 255, 190)
    assert (dict(verifier.signing.stream_timestamps), verifier.signing.timestamp) == state_before
    first = bytes(genuine.heartbeat_encode(6, 8, 0, 0, 0).pack(genuine))
    second = bytes(genuine.heartbeat_encode(6, 8, 0, 0, 0).pack(genuine))
    assert check_signature(verifier, first, 255, 190)
    assert check_signature(verifier, second, 255, 190)
    assert not check_signature(verifier, second, 255, 190)  # replayed
    # a new stream recorded over a minute ago is refused
    old = signer(key_bytes(KEY), 255, 190, link_id=9)
    old.signing.timestamp -= 120 * 100_000
    assert not check_signature(verifier, bytes(old.heartbeat_encode(6, 8, 0, 0, 0).pack(old)), 255, 190)
