"""A paho-mqtt Client that reads its socket in large chunks.

paho 2.x reads each packet with three or more ``recv`` calls (command byte, length bytes one
at a time, body) and handles one packet per ``select`` wake-up when nothing is in flight
outwards, as for a subscriber. Every one of those system calls gives up and re-takes the
interpreter lock, which, in a hub whose other threads are busy, is what slows the receive
thread most. This subclass fills a 64 KiB buffer per ``recv`` and keeps reading packets while
the buffer holds any; the MQTT handling itself is paho's, unchanged.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

CHUNK = 65536


class BufferedClient(mqtt.Client):
    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(CHUNK)  # BlockingIOError etc. as paho expects
            if not data:
                return data  # end of stream: paho treats it as a lost connection
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        out = self._rbuf[self._rpos:end]
        self._rpos = min(end, len(self._rbuf))
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # packets already buffered would wait for the next select() wake-up: handle them now
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0  # bytes of a closed connection never belong to the next
        super()._sock_close()
