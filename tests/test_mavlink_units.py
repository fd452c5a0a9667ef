"""MAVLink pieces without sockets: mode tables per autopilot, command building and encoding, CLI errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import drivers
from drivers.mavlink import mav, mode_name, mode_number, new_parser
from fieldhub.drone_commands import build
from fieldhub.errors import ValidationError
from tests.conftest import run_cli

APM, PX4 = mav.MAV_AUTOPILOT_ARDUPILOTMEGA, mav.MAV_AUTOPILOT_PX4
CUSTOM = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED


def test_mode_names_per_autopilot_and_vehicle() -> None:
    assert mode_name(APM, mav.MAV_TYPE_QUADROTOR, CUSTOM, 6) == "RTL"
    assert mode_name(APM, mav.MAV_TYPE_FIXED_WING, CUSTOM, 11) == "RTL"   # ArduPlane numbers differ
    assert mode_name(APM, mav.MAV_TYPE_FIXED_WING, CUSTOM, 6) == "FBWB"
    assert mode_name(APM, mav.MAV_TYPE_SUBMARINE, CUSTOM, 19) == "MANUAL"
    assert mode_name(APM, mav.MAV_TYPE_QUADROTOR, CUSTOM, 99) == "Mode(99)"
    assert mode_name(APM, mav.MAV_TYPE_QUADROTOR, 0, 6) == "Mode(0x00)"
    # PX4: main mode in bits 16-23, sub mode in 24-31
    assert mode_name(PX4, mav.MAV_TYPE_QUADROTOR, CUSTOM, (4 << 16) | (5 << 24)) == "RTL"
    assert mode_name(PX4, mav.MAV_TYPE_QUADROTOR, CUSTOM, 3 << 16) == "POSCTL"


def test_mode_numbers_round_trip() -> None:
    base, main, sub = mode_number(APM, mav.MAV_TYPE_QUADROTOR, "loiter")
    assert (base, main, sub) == (CUSTOM, 5, 0)
    base, main, sub = mode_number(PX4, mav.MAV_TYPE_QUADROTOR, "RTL")
    assert mode_name(PX4, mav.MAV_TYPE_QUADROTOR, base, (main << 16) | (sub << 24)) == "RTL"
    with pytest.raises(KeyError, match="LOITER"):
        mode_number(APM, mav.MAV_TYPE_QUADROTOR, "WARP")


def test_build_validates_operator_input() -> None:
    spec = build("goto", ["30.5940", "114.3070", "35"], APM, mav.MAV_TYPE_QUADROTOR)
    assert spec.use_int and spec.command == mav.MAV_CMD_DO_REPOSITION
    assert spec.params[4] == 305940000 and spec.params[5] == 1143070000 and math.isnan(spec.params[3])
    for bad in (["91", "0", "10"], ["x", "1", "2"], ["1", "2"]):
        with pytest.raises(ValidationError):
            build("goto", bad, APM, 2)
    with pytest.raises(ValidationError, match="unknown mode"):
        build("mode", ["WARP"], APM, 2)
    assert build("disarm", [], None, None).params[0] == 0.0


def test_driver_encoder_round_trips_through_pymavlink() -> None:
    enc = drivers.get("mavlink").encoder
    assert enc is not None
    p = new_parser()
    m = p.parse_buffer(enc({"action": "rtl", "target_system": 3, "confirmation": 2}))[0]
    assert (m.get_type(), m.target_system, m.command, m.confirmation) == ("COMMAND_LONG", 3, 20, 2)
    assert m.get_srcSystem() == 254
    m = p.parse_buffer(enc({"action": "mode", "args": ["AUTO"], "target_system": 1}))[0]
    assert (m.command, m.param1, m.param2) == (mav.MAV_CMD_DO_SET_MODE, CUSTOM, 3)
    m = p.parse_buffer(enc({"action": "goto", "args": ["-35.36", "149.16", "40"], "target_system": 1}))[0]
    assert (m.get_type(), m.x, m.y, m.z) == ("COMMAND_INT", -353600000, 1491600000, 40.0)


def test_cli_without_hub_or_without_mavlink(tmp_path: Path) -> None:
    proc = run_cli("drone", "uav-01", "rtl", "--data-dir", str(tmp_path))
    assert proc.returncode == 3 and "no hub is running" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("drone", "uav-01", "goto", "1", "2", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "goto needs LAT LON ALT" in proc.stderr
    proc = run_cli("drone", "uav-01", "fly", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "rtl" in proc.stderr
    help_text = run_cli("drone", "--help", check=True).stdout
    assert "Example:" in help_text and "fieldhub drone uav-01 rtl" in help_text
    assert "Example:" in run_cli("sim", "drone", "--help", check=True).stdout
    assert "Example:" in run_cli("drones", "--help", check=True).stdout
