"""End to end over real UDP: simulator -> hub -> `fieldhub drone ID rtl` -> ack -> mode change recorded; GCS forwarding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymavlink import mavutil

from drivers.mavlink import mav, new_parser
from simulators.drone import free_udp_port
from tests.conftest import ROOT, fieldhub_cmd, run_cli


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll a condition on the running system (there is no push signal to wait on across processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(fieldhub_cmd(*args), cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def drones(data_dir: Path) -> dict[str, dict]:
    proc = run_cli("drones", "--data-dir", str(data_dir), "--json")
    if proc.returncode != 0:
        return {}
    return {d["device_id"]: d for d in json.loads(proc.stdout)}


def test_sim_hub_command_ack_mode_change_and_gcs_forwarding(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub_port, gcs_port = free_udp_port(), free_udp_port()
    gcs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gcs.bind(("127.0.0.1", gcs_port))
    gcs.settimeout(0.5)
    conf = tmp_path / "hub.toml"
    conf.write_text(f"""
[hub]
data_dir = "{data}"
[mavlink]
endpoints = ["udpin:127.0.0.1:{hub_port}"]
forward = ["udpout:127.0.0.1:{gcs_port}"]
forward_commands = true
drones = {{1 = "uav-01"}}
command_timeout = "700ms"
""")
    hub = spawn("run", "--config", str(conf))
    sim = spawn("sim", "drone", "--count", "2", "--connect", f"udpout:127.0.0.1:{hub_port}", "--lossy",
                "--no-gps-loss", "--rate", "10")
    try:
        seen = wait_for(lambda: (d := drones(data)) and all(x["online"] for x in d.values()) and len(d) == 2 and d,
                        what="two drones online")
        assert set(seen) == {"uav-01", "drone-2"}
        assert seen["uav-01"]["mode"] == "AUTO"

        # the operator orders uav-01 home; the first copy is "lost", so the hub resends
        proc = run_cli("drone", "uav-01", "rtl", "--data-dir", str(data), "--json")
        assert proc.returncode == 0, proc.stderr
        ack = json.loads(proc.stdout)
        assert ack["result_name"] == "accepted" and ack["command"] == 20
        assert ack["attempts"] >= 2  # 2 unless the machine stalled the ack past command_timeout
        wait_for(lambda: drones(data)["uav-01"]["mode"] == "RTL", what="uav-01 in RTL")

        # goto: the drone answers IN_PROGRESS first, then ACCEPTED
        proc = run_cli("drone", "2", "goto", "30.5940", "114.3070", "35", "--data-dir", str(data))
        assert proc.returncode == 0, proc.stderr
        assert "ACCEPTED" in proc.stdout and "IN_PROGRESS" in proc.stdout
        wait_for(lambda: drones(data)["drone-2"]["mode"] == "GUIDED", what="drone-2 in GUIDED")

        # an unknown mode is refused before anything is sent, with one clear line
        proc = run_cli("drone", "uav-01", "mode", "WARP", "--data-dir", str(data))
        assert proc.returncode == 1 and "unknown mode 'WARP'" in proc.stderr and "Traceback" not in proc.stderr

        # the ground station got the raw stream of both drones...
        parser = new_parser()
        got: dict[int, set[str]] = {}
        peer = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (len(got) == 2 and all("HEARTBEAT" in v for v in got.values())):
            try:
                chunk, peer = gcs.recvfrom(65535)
            except TimeoutError:
                continue
            for m in parser.parse_buffer(chunk) or ():
                got.setdefault(m.get_srcSystem(), set()).add(m.get_type())
        assert {1, 2} <= set(got)
        assert {"HEARTBEAT", "GLOBAL_POSITION_INT", "ATTITUDE"} <= got[1]
        # ...and its own command goes back through the hub to drone 2, the ack comes back to it
        # (like a real GCS it resends with confirmation+1: the lossy simulator drops the first copy)
        qgc = new_parser(255, 190)
        ack_seen = False
        deadline = time.monotonic() + 5
        confirmation = 0
        resend_at = 0.0
        while time.monotonic() < deadline and not ack_seen:
            if time.monotonic() >= resend_at:
                gcs.sendto(bytes(qgc.command_long_encode(2, 1, mav.MAV_CMD_DO_SET_MODE, confirmation, 1,
                                                         mavutil.mode_mapping_byname(2)["LOITER"], 0, 0, 0, 0, 0)
                                 .pack(qgc)), peer)
                confirmation += 1
                resend_at = time.monotonic() + 0.5
            try:
                chunk, _ = gcs.recvfrom(65535)
            except TimeoutError:
                continue
            ack_seen = any(m.get_type() == "COMMAND_ACK" and m.command == mav.MAV_CMD_DO_SET_MODE
                           and m.target_system == 255 and m.result == 0
                           for m in parser.parse_buffer(chunk) or ())
        assert confirmation >= 2  # the first copy was dropped by the drone, a resend got through
        assert ack_seen
        wait_for(lambda: drones(data)["drone-2"]["mode"] == "LOITER", what="drone-2 in LOITER by the GCS")
    finally:
        stop(sim)
        hub_err = stop(hub)
        gcs.close()
    assert "Traceback" not in hub_err, hub_err

    # the hub recorded the mode change and the command outcome
    q = run_cli("query", "drone_state", "--device", "uav-01", "--data-dir", str(data), "--json", check=True)
    states = [json.loads(x) for x in q.stdout.splitlines()]
    rtl = [s for s in states if s["fields"]["mode"] == "RTL"]
    assert rtl and rtl[0]["fields"]["changed"] is True
    q = run_cli("query", "command", "--data-dir", str(data), "--json", check=True)
    cmds = [json.loads(x) for x in q.stdout.splitlines()]
    by_action = {c["fields"]["action"]: c for c in cmds}
    assert by_action["rtl"]["device_id"] == "uav-01" and by_action["rtl"]["priority"] == "command"
    assert by_action["rtl"]["fields"]["result_name"] == "accepted" and by_action["rtl"]["fields"]["attempts"] >= 2
    assert by_action["goto"]["fields"]["in_progress_seen"] is True
    pos = [json.loads(x) for x in run_cli("query", "position", "--device", "uav-01", "--data-dir", str(data),
                                          "--json", check=True).stdout.splitlines()]
    assert pos and all(abs(p["fields"]["lat"] - 30.59) < 0.05 for p in pos)

    # the tlog holds the raw stream both ways: the resend carried confirmation 1
    tlogs = sorted((data / "tlog" / "uav-01").glob("*.tlog"))
    assert tlogs
    conn = mavutil.mavlink_connection(str(tlogs[0]), dialect="ardupilotmega", robust_parsing=True)
    confirmations, types, bad = [], set(), 0
    while (m := conn.recv_msg()) is not None:
        types.add(m.get_type())
        bad += m.get_type() == "BAD_DATA"
        if m.get_type() == "COMMAND_LONG" and m.command == 20:
            confirmations.append(m.confirmation)
    conn.close()
    assert confirmations[:2] == [0, 1] and confirmations == list(range(len(confirmations)))
    assert bad == 0 and {"HEARTBEAT", "GLOBAL_POSITION_INT", "COMMAND_ACK"} <= types
    summary = json.loads(run_cli("replay", "mavlink", str(tlogs[0]), "--summary", "--json", check=True).stdout)
    assert summary["bad_frames"] == 0 and summary["by_kind"]["position"] > 0


def test_demo_flies_two_drones(tmp_path: Path) -> None:
    data = tmp_path / "demo" / "data"
    proc = run_cli("demo", "--seconds", "4", "--json", "--data-dir", str(data), timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary["simulators"]["drones"]) == {"sysid 1", "sysid 2"}
    q = run_cli("query", "position", "--data-dir", str(data), "--json", check=True)
    devices = {json.loads(x)["device_id"] for x in q.stdout.splitlines()}
    assert {"uav-01", "uav-02"} <= devices
    q = run_cli("query", "presence", "--data-dir", str(data), "--json", check=True)
    online = [r for x in q.stdout.splitlines() if (r := json.loads(x))["device_id"].startswith("uav-")]
    assert {r["device_id"] for r in online if r["fields"]["online"]} == {"uav-01", "uav-02"}
    assert all(r["tags"].get("kind") == "drone" for r in online)  # registry tags on drone records
