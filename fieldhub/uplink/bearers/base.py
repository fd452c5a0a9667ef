"""Bearers: how bytes reach the center over one link.

A bearer is small on purpose (``start, stop, up, send, probe, status``); the link manager
(``fieldhub.uplink.links``) decides which one carries what. ``mqtt`` is an IP link to the
center's broker, ``beidou`` Beidou RDSS short messages, ``tiantong`` the satellite phone's SMS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fieldhub.uplink.config import LinkConfig

#: ``on_ack(link_name, payload)``: an acknowledgement arrived on that link
AckHandler = Callable[[str, bytes], None]
PROBE_WINDOW = 20


class Bearer(Protocol):
    """One link to the center."""

    name: str
    config: LinkConfig

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def up(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...
