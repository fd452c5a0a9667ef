"""Every firmware profile loads and validates; extends merges; bad profiles name the key."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fieldhub.core import profiles
from fieldhub.core.errors import ConfigError
from fieldhub.core.profiles import names as known_models


def test_every_profile_validates() -> None:
    names = profiles.names()
    assert len(names) >= 10
    families = set()
    for name in names:
        p = profiles.load(name)
        families.add(p["family"])
        assert p["serial"]["baud"] > 0 and p["description"]
    assert families == set(profiles.FAMILIES)
    assert known_models() == names  # the registry validates device models against these


def test_the_serial_family_table_is_the_one_list() -> None:
    """firmware_profiles.FAMILIES names every serial family once: each has a driver with a
    simulator, a session in the serial source, a default profile of its own family, and the
    CLI's `sim serial` kinds come from it."""
    import drivers
    from fieldhub.cli.serial import KIND_DRIVER
    from fieldhub.sources.serial.sessions import SESSIONS
    from firmware_profiles import FAMILIES

    assert set(SESSIONS) == set(FAMILIES) == set(profiles.FAMILIES)
    assert set(FAMILIES) <= set(drivers.DRIVERS)
    assert sorted(KIND_DRIVER.values()) == sorted(FAMILIES)
    for name, family in FAMILIES.items():
        assert drivers.get(name).simulator.startswith("simulators.")
        assert profiles.load(family.default)["family"] == name
        if family.section:
            assert family.section in profiles.load(family.default)


def test_extends_merges_child_over_base() -> None:
    bd3 = profiles.load("rdss-bd3")
    assert bd3["chain"] == ["rdss-bd3", "rdss-bd2-level3"]
    assert bd3["rdss"]["max_message_bits"] == 14000 and bd3["rdss"]["fki_style"] == "bd3"
    assert bd3["rdss"]["feedback_timeout_s"] == 5  # inherited
    assert bd3["serial"]["baud"] == 115200


def _write(d: Path, name: str, text: str) -> None:
    (d / f"{name}.toml").write_text(text, encoding="utf-8")


BASE = 'family = "pelco_d"\ndescription = "x"\n[serial]\nbaud = 9600\nbytesize = 8\nparity = "N"\nstopbits = 1\n' \
       '[ptz]\naddress = 1\npoll_interval_s = 5\nreply_timeout_s = 1\nmax_speed_dps = 60\n'


@pytest.mark.parametrize("text,key", [
    (BASE.replace("baud = 9600", "baud = 7"), "serial.baud"),
    (BASE.replace('parity = "N"', 'parity = "X"'), "serial.parity"),
    (BASE.replace('family = "pelco_d"', 'family = "zigbee"'), "family"),
    ("colour = 1\n" + BASE, "colour"),
    (BASE.replace("poll_interval_s = 5", "poll_interval_s = -1"), "ptz.poll_interval_s"),
])
def test_bad_profile_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    _write(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as err:
        profiles.load("bad", tmp_path)
    assert key in str(err.value) and "bad.toml" in str(err.value)


def test_extends_loop_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'extends = "b"\n')
    _write(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(ConfigError, match="extends loop"):
        profiles.load("a", tmp_path)


def test_profiles_cli(cli) -> None:
    out = orjson.loads(cli("profiles", "list", "--json", check=True).stdout)
    assert {p["name"] for p in out} == set(profiles.names())
    assert next(p for p in out if p["name"] == "tiantong-pdu")["extends"] == "tiantong-generic"
    shown = orjson.loads(cli("profiles", "show", "pelco-d-generic", "--json", check=True).stdout)
    assert shown["units"]["position_deg"] == 0.01
    bad = cli("profiles", "show", "nope")
    assert bad.returncode != 0 and "no firmware profile" in bad.stderr and "Traceback" not in bad.stderr
