"""[uplink] configuration: the links (bearers) to the provincial center and how batches go out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fieldhub.core.config import Duration
from fieldhub.core.errors import ValidationError
from fieldhub.core.records import PRIORITY_NAMES
from fieldhub.uplink.acksign import parse_key

LINK_KINDS = ("mqtt", "4g", "tiantong", "beidou")
_RATE = {"": 1, "bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9}


def parse_rate(text: str | float) -> float:
    """'512kbit', '2mbit', '9600' (bit/s) -> bits per second."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z/]*)\s*", text)
    unit = (m.group(2).lower().replace("/s", "") if m else "x")
    if not m or unit not in _RATE:
        raise ValueError(f"{text!r} is not a bit rate (e.g. 512kbit, 2mbit, 9600)")
    return float(m.group(1)) * _RATE[unit]


def is_ip_url(url: str) -> bool:
    """An MQTT URL (an IP link) rather than a serial port."""
    return url.split("://", 1)[0] in ("mqtt", "mqtts", "tcp", "ssl") and "://" in url


@dataclass(frozen=True)
class LinkConfig:
    """[[uplink.links]] one bearer to the center."""

    #: unique name shown in `fieldhub uplink status`
    name: str = ""
    #: mqtt (broadband satellite), 4g, tiantong (satellite phone data) or beidou (RDSS short messages)
    kind: str = "mqtt"
    #: mqtt/4g: mqtt://HOST:PORT or mqtts://HOST:PORT; beidou: serial port or pyserial URL;
    #: tiantong: mqtt(s):// for its IP data service, or a serial port for SMS (AT commands)
    url: str = ""
    #: nominal bit rate, e.g. "512kbit"; sizes batches so one batch takes about batch_time
    bandwidth: str = "512kbit"
    #: nominal one-way latency
    latency: Duration = Duration(0.3)
    #: largest message in bytes (batches are split to fit)
    mtu: int = 256 * 1024
    #: relative cost; the cheapest link that is up and allowed carries a class
    cost: float = 1.0
    #: priority classes this link may carry
    classes: list[str] = field(default_factory=lambda: list(PRIORITY_NAMES))
    #: TLS: CA file, client certificate and key (mqtts:// or when set)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    #: beidou: the center's card number; tiantong SMS: the center's phone number
    dest_card: str = ""
    #: beidou: the card's service interval; tiantong SMS: minimum gap between messages
    card_interval: Duration = Duration(60)
    #: beidou: card level 1-4 (message size 110/408/628/848 bits)
    card_level: int = 3

    @property
    def bps(self) -> float:
        return parse_rate(self.bandwidth)

    def validate(self) -> None:
        if not self.name:
            raise ValueError("every link needs a name")
        if self.kind not in LINK_KINDS:
            raise ValueError(f"link {self.name}: kind {self.kind!r} is not one of {', '.join(LINK_KINDS)}")
        if not self.url:
            raise ValueError(f"link {self.name}: url is empty")
        parse_rate(self.bandwidth)
        bad = [c for c in self.classes if c not in PRIORITY_NAMES]
        if bad:
            raise ValueError(f"link {self.name}: unknown classes {bad}; use {', '.join(PRIORITY_NAMES)}")
        if self.kind == "beidou" and not self.dest_card:
            raise ValueError(f"link {self.name}: a beidou link needs dest_card (the center's card)")
        if self.kind in ("mqtt", "4g") and not is_ip_url(self.url):
            raise ValueError(f"link {self.name}: url {self.url!r} must be mqtt://HOST:PORT or mqtts://HOST:PORT")
        if self.kind == "tiantong" and not is_ip_url(self.url) and not self.dest_card:
            raise ValueError(f"link {self.name}: a tiantong SMS link needs dest_card (the center's number)")
        if self.kind == "beidou" and self.card_level not in (1, 2, 3, 4):
            raise ValueError(f"link {self.name}: card_level must be 1-4")


@dataclass(frozen=True)
class UplinkConfig:
    """[uplink] store-and-forward to the provincial center over the links below."""

    #: send to the center (needs at least one link)
    enabled: bool = False
    #: the bearers, tried by cost: [[uplink.links]] tables (see docs/uplink.md)
    links: list[LinkConfig] = field(default_factory=list)
    #: most records in one batch
    batch_records: int = 10_000
    #: target link time per batch (batch size follows the link's bandwidth)
    batch_time: Duration = Duration(1.0)
    #: unacknowledged link time in flight per link, in batches of batch_time (short batches of
    #: well-compressed data count by their bytes, up to 4 x window batches)
    window: int = 4
    #: resend a batch the center has not acknowledged within this long
    ack_timeout: Duration = Duration(30)
    #: how often each link is probed (RTT, loss)
    probe_interval: Duration = Duration(2)
    #: zstd level for batches (1-22)
    zstd_level: int = 9
    #: hex key for the MAC on Beidou short messages (shared with the center)
    mac_key: str = ""
    #: hex key the center signs this hub's acks with (`fieldhub provision center-broker` writes it
    #: to ack-keys.json); when set, only acks whose MAC verifies move the uplink. Empty: acks are
    #: bound to what was sent but not signed, so a center worker account could forge them
    ack_key: str = ""

    def validate(self) -> None:
        names = [link.name for link in self.links]
        if len(names) != len(set(names)):
            raise ValueError("link names must be unique")
        if self.enabled and not self.links:
            raise ValueError("uplink is enabled but no [[uplink.links]] are configured")
        if self.batch_records < 1 or self.window < 1:
            raise ValueError("batch_records and window must be at least 1")
        if not 1 <= self.zstd_level <= 22:
            raise ValueError("zstd_level must be 1-22")
        if self.mac_key:
            bytes.fromhex(self.mac_key)
        if self.ack_key:
            try:
                parse_key(self.ack_key, "uplink.ack_key")
            except ValidationError as exc:
                raise ValueError(str(exc)) from None
        short = [link for link in self.links if link.kind == "beidou"
                 or (link.kind == "tiantong" and not is_ip_url(link.url))]
        if short and self.enabled and not self.mac_key:
            raise ValueError("beidou and tiantong SMS links need uplink.mac_key (hex, shared with the center)")
