"""MAVLink pieces without sockets: mode tables per autopilot, command building and encoding, CLI errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import drivers
from drivers.mavlink import build, mav, mode_name, mode_number, new_parser
from fieldhub.core.errors import ValidationError
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


def test_telemetry_long_statustext_and_nan_fields() -> None:
    from drivers.mavlink import Telemetry

    t = Telemetry(lambda sysid: f"d{sysid}")
    enc = new_parser(1, 1)
    text = ("PreArm: " + "x" * 60 + " end").encode()
    out = []
    for seq, i in enumerate(range(0, len(text), 50)):
        m = enc.statustext_encode(4, text[i:i + 50], 7, seq)
        out += t.handle(new_parser().parse_buffer(bytes(m.pack(enc)))[0], 10**18 + seq)
    assert [r.fields["text"] for r in out] == [text.decode()]
    hud = new_parser().parse_buffer(bytes(enc.vfr_hud_encode(float("nan"), 3.0, 90, 40, 12.0, 0.5).pack(enc)))[0]
    rec = t.handle(hud, 10**18)[0]
    assert "airspeed_ms" not in rec.fields and rec.fields["groundspeed_ms"] == 3.0


def test_fastcrc_is_in_use() -> None:
    """PITFALLS: pymavlink halves its speed without fastcrc, silently."""
    assert mav.mcrf4xx is not None


def test_keystore_keys_and_permissions(tmp_path: Path) -> None:
    import hashlib
    import os

    from fieldhub.hub import load_config
    from fieldhub.sources.mavlink.config import load_keys

    ks = tmp_path / "drone-keys.toml"
    ks.write_text('uav-01 = "' + "ab" * 32 + '"\nuav-02 = "county passphrase"\n')
    os.chmod(ks, 0o600)
    cfg = load_config(None, {"mavlink.keystore": str(ks),
                                "mavlink.signing_keys": {"uav-01": "overridden", "uav-03": "inline"}}, env={})
    keys, warnings = load_keys(cfg.mavlink)
    assert keys["uav-01"] == bytes.fromhex("ab" * 32)  # the keystore wins over the inline key
    assert keys["uav-02"] == hashlib.sha256(b"county passphrase").digest()
    assert keys["uav-03"] == hashlib.sha256(b"inline").digest()
    assert warnings == []
    os.chmod(ks, 0o644)
    assert "chmod 600" in load_keys(cfg.mavlink)[1][0]
