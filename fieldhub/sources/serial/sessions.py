"""Per-family device sessions: init, polls, and commands that wait for the device's answer.

A session runs beside its port's reader thread: the reader hands every good frame (and the
records parsed from it) to ``on_frame``; commands write through the port and wait on a
bounded queue for the answer. Polls and follow-ups (reading a new SMS) run on the session's
own worker thread, never on the reader.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from drivers import beidou_rdss, pelco_d, tiantong
from drivers.base import Frame
from drivers.sentence import sentence
from drivers.sms_pdu import split_text, submit_pdus
from fieldhub.core.errors import FieldhubError, TransportError, ValidationError
from fieldhub.core.records import Record
from fieldhub.core.worker import Worker


class Session:
    """Base: a worker thread running init on connect and a poll every ``poll_interval`` seconds."""

    poll_interval = 0.0

    def __init__(self, port: Any, profile: dict[str, Any]) -> None:
        self.port = port
        self.profile = profile
        self._tasks: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=64)
        self._answers: queue.Queue[tuple[Frame, list[Record]]] = queue.Queue(maxsize=256)
        self._listening = False
        self._lock = threading.RLock()
        self._worker = Worker(f"session-{port.device_id}", self._run)
        #: set when the session stops: commands waiting for an answer give up at once
        self._stop = self._worker.stop_event
        self.stats: dict[str, int] = {}

    # -- lifecycle
    def start(self) -> None:
        self._worker.start()

    def signal(self) -> None:
        """Ask the worker to end (and commands waiting on the device to give up) without waiting."""
        self._worker.signal()
        try:
            self._tasks.put_nowait(("", None))  # wake the worker
        except queue.Full:
            pass

    def stop(self, timeout: float = 5.0) -> bool:
        """Idempotent; False if the worker (busy in a poll) was still alive after ``timeout``."""
        self.signal()
        return self._worker.join(timeout)

    def task(self, name: str, arg: Any = None) -> None:
        try:
            self._tasks.put_nowait((name, arg))
        except queue.Full:
            self.count("tasks_dropped")

    def count(self, name: str, by: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + by

    def _run(self, stop: threading.Event) -> None:
        next_poll = time.monotonic() + (self.poll_interval or 3600)
        while not stop.is_set():
            timeout = max(0.05, next_poll - time.monotonic()) if self.poll_interval else 0.5
            try:
                name, arg = self._tasks.get(timeout=timeout)
            except queue.Empty:
                name, arg = "", None
            try:
                if name == "connected":
                    self.on_connected()
                elif name:
                    self.on_task(name, arg)
                if self.poll_interval and time.monotonic() >= next_poll and self.port.connected:
                    next_poll = time.monotonic() + self.poll_interval
                    self.poll()
            except FieldhubError as exc:
                self.count("task_errors")
                self.port.note("session_error", f"{name or 'poll'}: {exc}", f"{name or '轮询'} 失败：{exc}")

    # -- hooks
    def on_connected(self) -> None:
        for line in self.profile.get("init", []):
            self.port.write(self.init_line(line))

    def init_line(self, line: str) -> bytes:
        return line.encode() + b"\r\n"

    def on_task(self, name: str, arg: Any) -> None:
        pass

    def poll(self) -> None:
        pass

    def on_frame(self, frame: Frame, records: list[Record]) -> None:
        if self._listening:
            try:
                self._answers.put_nowait((frame, records))
            except queue.Full:
                self.count("answers_dropped")

    # -- waiting for answers
    def _begin(self) -> None:
        while True:
            try:
                self._answers.get_nowait()
            except queue.Empty:
                break
        self._listening = True

    def _wait_for(self, match: Callable[[Frame, list[Record]], Any], timeout: float) -> Any:
        """The first non-None ``match(frame, records)`` within ``timeout``; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return None
            try:
                frame, records = self._answers.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            got = match(frame, records)
            if got is not None:
                return got

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stop.wait(seconds):
            raise TransportError("port stopping / 端口正在停止")

    def status(self) -> dict[str, Any]:
        return dict(self.stats)


class NmeaSession(Session):
    def init_line(self, line: str) -> bytes:
        return sentence(line)


class RdssSession(Session):
    """Beidou RDSS: card info, TXA with the card's service interval enforced here, FKI retry."""

    def __init__(self, port: Any, profile: dict[str, Any]) -> None:
        super().__init__(port, profile)
        r = profile.get("rdss", {})
        self.interval = float(r.get("service_interval_s", 60))
        self.margin = float(r.get("interval_margin_s", 0.5))
        self.max_bits = int(r.get("max_message_bits", 628))
        self.max_retries = int(r.get("max_retries", 3))
        self.feedback_timeout = float(r.get("feedback_timeout_s", 5))
        self.default_encoding = str(r.get("default_encoding", "mixed"))
        self.reasons = {str(k): v for k, v in r.get("fki_reasons", {}).items()}
        self.card: dict[str, Any] = {}
        self.next_allowed = 0.0  # monotonic
        self.sent: list[dict[str, Any]] = []
        self._send_lock = threading.Lock()

    def init_line(self, line: str) -> bytes:
        return sentence(line)

    def on_frame(self, frame: Frame, records: list[Record]) -> None:
        for r in records:
            if r.kind == "bd_card" and r.fields.get("present"):
                self.card = dict(r.fields)
                if r.fields.get("interval_s"):
                    self.interval = float(r.fields["interval_s"])
        super().on_frame(frame, records)

    def wait_s(self) -> float:
        return max(0.0, self.next_allowed - time.monotonic())

    def send(self, dest: str, text: str, encoding: str = "", express: bool = False,
             wait: bool = True) -> dict[str, Any]:
        enc_name = encoding or self.default_encoding
        if enc_name not in beidou_rdss.ENCODINGS:
            raise ValidationError(f"encoding {enc_name!r}: one of chinese, code, mixed")
        enc = beidou_rdss.ENCODINGS[enc_name]
        bits = beidou_rdss.content_bits(text, enc)
        if bits > self.max_bits:
            raise ValidationError(f"message is {bits} bits; this card allows {self.max_bits} "
                                  f"/ 短报文超长（{bits} 位，上限 {self.max_bits} 位）")
        data = beidou_rdss.encode({"cmd": "txa", "dest": dest, "text": text, "encoding": enc, "express": express})
        with self._send_lock:
            attempts, waited = 0, 0.0
            refusals: list[dict[str, Any]] = []
            while True:
                delay = self.wait_s()
                if delay > 0:
                    if not wait:
                        raise FieldhubError(f"service interval: next send allowed in {delay:.0f}s "
                                            f"/ 北斗服务频度未到，{delay:.0f} 秒后可发")
                    self._sleep(delay)
                    waited += delay
                self._begin()
                try:
                    self.port.write(data)
                    attempts += 1
                    sent_at = time.monotonic()
                    # the module counts from its own transmission, a little after our write
                    self.next_allowed = sent_at + self.interval + self.margin
                    fb = self._wait_for(lambda f, recs: next((r.fields for r in recs if r.kind == "bd_feedback"), None),
                                        self.feedback_timeout)
                finally:
                    self._listening = False
                if fb is None:
                    raise TransportError(f"no $BDFKI feedback within {self.feedback_timeout:.0f}s "
                                         f"/ {self.feedback_timeout:.0f} 秒内未收到北斗反馈")
                if fb.get("executed"):
                    self.next_allowed = max(self.next_allowed, sent_at + float(fb.get("wait_s") or 0))
                    result = {"dest": dest, "bits": bits, "attempts": attempts, "waited_s": round(waited, 1),
                              "refusals": refusals, "encoding": enc_name}
                    self.sent.append(result)
                    self.count("sent")
                    return result
                reason = str(fb.get("reason", ""))
                refusals.append({"reason": reason, "text": self.reasons.get(reason, reason),
                                 "wait_s": fb.get("wait_s", 0)})
                self.count("refused")
                if attempts > self.max_retries:
                    raise FieldhubError(f"module refused the send {attempts} times (last: "
                                        f"{self.reasons.get(reason, reason)}) / 北斗模块拒绝发送")
                # retry after the wait the module states (or the card interval if it says none)
                wait_s = float(fb.get("wait_s") or 0) or self.interval
                self.next_allowed = time.monotonic() + wait_s
                self.port.note("bd_retry", f"send refused (reason {reason}); retrying in {wait_s:.0f}s",
                               f"北斗发送被拒（原因 {reason}），{wait_s:.0f} 秒后重试")

    def status(self) -> dict[str, Any]:
        return {**self.stats, "card": self.card.get("card", ""), "interval_s": self.interval,
                "next_send_in_s": round(self.wait_s(), 1)}


class TiantongSession(Session):
    """Tiantong AT terminal: polls CSQ/CREG, reads new SMS on +CMTI, sends SMS (text/UCS2 or PDU)."""

    FINALS = (b"OK", b"ERROR")

    def __init__(self, port: Any, profile: dict[str, Any]) -> None:
        super().__init__(port, profile)
        t = profile.get("tiantong", {})
        self.poll_interval = float(t.get("poll_interval_s", 30))
        self.timeout = float(t.get("command_timeout_s", 10))
        self.sms_timeout = float(t.get("sms_timeout_s", 60))
        self.sms_mode = str(t.get("sms_mode", "text"))
        self.retries = int(t.get("sms_retries", 2))
        self.retry_wait = float(t.get("sms_retry_wait_s", 5))

    def init_line(self, line: str) -> bytes:
        return line.encode() + b"\r"

    def on_connected(self) -> None:
        for line in self.profile.get("init", []):
            self.at(line)
        self.poll()

    def on_frame(self, frame: Frame, records: list[Record]) -> None:
        for r in records:
            if r.kind == "sms_notice":
                self.task("read_sms", int(r.fields["index"]))
        super().on_frame(frame, records)

    def on_task(self, name: str, arg: Any) -> None:
        if name == "read_sms":
            # read in PDU mode whatever the send mode: only the PDU carries the concatenation
            # header that joins a long message's parts
            self.at("AT+CMGF=0")
            self.at(f"AT+CMGR={int(arg)}")
            self.at(f"AT+CMGD={int(arg)}")
            self.count("sms_read")

    def poll(self) -> None:
        self.at("AT+CSQ")
        self.at("AT+CREG?")

    def at(self, line: str, timeout: float | None = None, prompt: bool = False) -> list[bytes]:
        """Send one AT command, return the lines up to OK; ERROR raises."""
        with self._lock:
            self._begin()
            try:
                self.port.write(line.encode("ascii") + b"\r")
                return self._collect(timeout or self.timeout, prompt, line)
            finally:
                self._listening = False

    def _collect(self, timeout: float, prompt: bool, what: str) -> list[bytes]:
        lines: list[bytes] = []

        def match(frame: Frame, records: list[Record]) -> Any:
            raw = frame.raw.strip()
            if prompt and raw == b">":
                return "prompt"
            if raw in self.FINALS or raw.startswith((b"+CMS ERROR", b"+CME ERROR")):
                return raw
            lines.append(raw)
            return None

        got = self._wait_for(match, timeout)
        if got is None:
            raise TransportError(f"{what}: no answer within {timeout:.0f}s / 终端无应答")
        if got == "prompt" or got == b"OK":
            return lines
        raise FieldhubError(f"{what}: {got.decode(errors='replace')} / 终端返回错误")

    def _submit(self, cmgs: str, body: bytes) -> int:
        with self._lock:
            self._begin()
            try:
                self.port.write(cmgs.encode() + b"\r")
                self._collect(self.timeout, True, cmgs)
                self.port.write(body + tiantong.CTRL_Z)
                lines = self._collect(self.sms_timeout, False, "SMS submit")
            finally:
                self._listening = False
        for ln in lines:
            if ln.startswith(b"+CMGS:"):
                return int(ln.split(b":")[1].strip() or 0)
        return -1

    def send_sms(self, number: str, text: str, mode: str = "") -> dict[str, Any]:
        mode = mode or self.sms_mode
        if not text:
            raise ValidationError("empty message / 短信内容为空")
        coding, parts = split_text(text)
        if mode == "text" and len(parts) > 1:
            mode = "pdu"  # text mode cannot carry a concatenation header: long SMS go as PDUs
        refs: list[int] = []
        retries_before = self.stats.get("sms_retries", 0)
        if mode == "pdu":
            def prepare_pdu() -> None:
                self.at("AT+CMGF=0")
            prepare_pdu()
            for pdu in submit_pdus(number, text):
                refs.append(self._with_retry(f"AT+CMGS={len(pdu) // 2 - 1}", pdu.encode(), prepare_pdu))
        else:
            self.at("AT+CMGF=1")
            # plain printable ASCII goes as is; anything else (Chinese, accents, line breaks, a
            # stray Ctrl-Z that would end the message early) goes as UCS2 hex
            ucs2 = coding == "ucs2" or not (text.isascii() and text.isprintable())
            if ucs2:
                def prepare() -> None:
                    self.at('AT+CSCS="UCS2"')
                    self.at("AT+CSMP=17,167,0,8")
                num = number.encode("utf-16-be").hex().upper()
                body = text.encode("utf-16-be").hex().upper().encode()
            else:
                def prepare() -> None:
                    self.at('AT+CSCS="GSM"')
                    self.at("AT+CSMP=17,167,0,0")
                num, body = number, text.encode("ascii")
            prepare()
            refs.append(self._with_retry(f'AT+CMGS="{num}"', body, prepare))
            coding = "ucs2" if ucs2 else coding
        self.count("sms_sent")
        return {"number": number, "mode": mode, "coding": coding, "parts": len(parts), "refs": refs,
                "retries": self.stats.get("sms_retries", 0) - retries_before}

    def _with_retry(self, cmgs: str, body: bytes, prepare: Callable[[], None]) -> int:
        for attempt in range(self.retries + 1):
            try:
                return self._submit(cmgs, body)
            except (TransportError, FieldhubError) as exc:
                if attempt >= self.retries or not self.port.connected:
                    raise
                self.count("sms_retries")
                self.port.note("sms_retry", f"SMS submit failed ({exc}); retry in {self.retry_wait:.0f}s",
                               f"短信发送失败（{exc}），{self.retry_wait:.0f} 秒后重试")
                self._sleep(self.retry_wait)
                prepare()
        raise AssertionError("unreachable")


class PtzSession(Session):
    """Pelco-D ball: polls pan/tilt/zoom (replies become ptz_position records); commands and queries."""

    def __init__(self, port: Any, profile: dict[str, Any]) -> None:
        super().__init__(port, profile)
        p = profile.get("ptz", {})
        self.address = int(p.get("address", 1))
        self.poll_interval = float(p.get("poll_interval_s", 5))
        self.reply_timeout = float(p.get("reply_timeout_s", 1))
        self.unit = float(profile.get("units", {}).get("position_deg", 0.01))

    def on_connected(self) -> None:
        self.poll()

    def poll(self) -> None:
        for axis in ("pan", "tilt", "zoom"):
            try:
                self.query(axis)
            except TransportError:
                self.count("poll_timeouts")

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        full = {"address": self.address, "unit": self.unit, **cmd}
        if str(full.get("cmd", "")).startswith("query_"):
            return {"axis": full["cmd"][6:], "value": self.query(full["cmd"][6:])}
        self.port.write(pelco_d.encode(full))
        return {"sent": full["cmd"]}

    def query(self, axis: str) -> float:
        with self._lock:
            self._begin()
            try:
                self.port.write(pelco_d.encode({"cmd": f"query_{axis}", "address": self.address}))
                got = self._wait_for(lambda f, recs: next(
                    (r.fields for r in recs if r.kind == "ptz_position" and r.fields.get("axis") == axis), None),
                    self.reply_timeout)
            finally:
                self._listening = False
        if got is None:
            raise TransportError(f"PTZ did not answer the {axis} query within {self.reply_timeout}s / 云台无应答")
        return float(got.get(f"{axis}_deg", got.get("zoom", 0)))


class DmrSession(Session):
    def on_connected(self) -> None:
        pass


SESSIONS: dict[str, type[Session]] = {"nmea": NmeaSession, "beidou_rdss": RdssSession,
                                      "tiantong": TiantongSession, "pelco_d": PtzSession, "dmr": DmrSession}
