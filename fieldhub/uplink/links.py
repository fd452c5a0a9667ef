"""The link manager: probes every bearer and picks, per priority class, the best link that is up.

Ranking: lowest ``cost`` first, then highest bandwidth, then lowest measured RTT. A link
that drops (disconnect, or two probes lost) stops being chosen at once, so the next one
takes over within a probe timeout; when a better link returns and answers probes again it
is chosen again (fail back). Every switch is written to the operator log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority
from fieldhub.uplink.bearers.beidou import BeidouBearer
from fieldhub.uplink.bearers.mqtt import MqttBearer
from fieldhub.uplink.bearers.tiantong import TiantongSmsBearer
from fieldhub.uplink.config import UplinkConfig, is_ip_url

#: one uplink bearer: an IP link over MQTT, or a short-message satellite link
Bearer = MqttBearer | BeidouBearer | TiantongSmsBearer


class LinkManager:
    def __init__(self, cfg: UplinkConfig, hub_id: str, on_ack: Callable[[str, bytes], None],
                 oplog: OpLog | None = None) -> None:
        self.cfg = cfg
        self.oplog = oplog or OpLog(None)
        self.links: list[Bearer] = []
        for lc in cfg.links:
            if lc.kind == "beidou":
                self.links.append(BeidouBearer(lc, hub_id))
            elif lc.kind == "tiantong" and not is_ip_url(lc.url):
                self.links.append(TiantongSmsBearer(lc, hub_id))
            else:
                timeout = max(2.0, 2 + 4 * float(lc.latency) + cfg.window * float(cfg.batch_time))
                self.links.append(MqttBearer(lc, hub_id, on_ack, probe_timeout=timeout))
        self._allowed = {link.name: {Priority.parse(c) for c in link.config.classes} for link in self.links}
        self._chosen: dict[Priority, str | None] = {}
        self._next_probe = 0.0

    def start(self) -> None:
        for link in self.links:
            link.start()

    def stop(self) -> None:
        for link in self.links:
            link.stop()

    def rank(self, link: Bearer) -> tuple[float, float, float]:
        """Sort key of a link: lower is better (cost, then bandwidth, then measured RTT)."""
        rtt = link.rtt if link.rtt is not None else 1e9
        return (link.config.cost, -link.config.bps, rtt)

    def tick(self) -> None:
        """Probe when due and note which link now carries each class."""
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + float(self.cfg.probe_interval)
            for link in self.links:
                if isinstance(link, MqttBearer):
                    link.probe()
        for prio in Priority:
            best = self.best(prio)
            name = best.name if best is not None else None
            old = self._chosen.get(prio, "?")
            if name != old:
                self._chosen[prio] = name
                if old != "?":
                    self.oplog.write("warning" if name is None else "info", "uplink_link_switch",
                                     f"uplink: {prio.label} now goes over {name or 'no link (held)'} "
                                     f"(was {old or 'none'})",
                                     f"上行：{prio.label} 类改走 {name or '无可用链路（暂存）'}（原 {old or '无'}）",
                                     priority=prio.label, link=name, previous=old)

    def best(self, prio: Priority) -> Bearer | None:
        """The best link that is up and may carry ``prio`` (None = hold it)."""
        candidates = [link for link in self.links if prio in self._allowed[link.name] and link.up()]
        return min(candidates, key=self.rank) if candidates else None

    def allowed(self, link: Bearer) -> set[Priority]:
        return self._allowed[link.name]

    def chosen(self) -> dict[str, str | None]:
        return {p.label: self._chosen.get(p) for p in Priority}

    def status(self) -> list[dict[str, Any]]:
        return [link.status() for link in self.links]
