"""[uplink] config: links are validated at start with the file, key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldhub.core.errors import ConfigError
from fieldhub.hub import load_config
from fieldhub.uplink.config import parse_rate

GOOD = """
[uplink]
enabled = true
mac_key = "00ff"
[[uplink.links]]
name = "geo"
url = "mqtts://center:8883"
bandwidth = "512kbit"
latency = "300ms"
[[uplink.links]]
name = "bd"
kind = "beidou"
url = "/dev/ttyUSB2"
dest_card = "0242286"
classes = ["alarm", "position"]
cost = 100
"""


def test_links_load_with_units(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD)
    up = load_config(f, env={}).uplink
    assert [l.name for l in up.links] == ["geo", "bd"]
    assert up.links[0].bps == 512_000 and up.links[0].latency == 0.3
    assert up.links[1].classes == ["alarm", "position"]
    assert parse_rate("2mbit") == 2e6 and parse_rate("9600") == 9600


@pytest.mark.parametrize("change, message", [
    ('kind = "beidou"', "dest_card"),
    ('classes = ["alarm", "urgent"]', "unknown classes"),
    ('bandwidth = "fast"', "bit rate"),
])
def test_bad_link_is_a_config_error_naming_the_key(tmp_path: Path, change: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD.replace('bandwidth = "512kbit"', change, 1))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(f, env={})
    assert "uplink.links[0]" in str(err.value) and str(f) in str(err.value)


def test_beidou_link_needs_a_mac_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD.replace('mac_key = "00ff"', ""))
    with pytest.raises(ConfigError, match="mac_key"):
        load_config(f, env={})
