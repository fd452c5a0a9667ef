"""Records, config, admin codes, registry, local store, consumer runner."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fieldhub.core import config
from fieldhub.core.consumer import ConsumerRunner
from fieldhub.core.errors import ConfigError, ValidationError
from fieldhub.core.log import DurableLog
from fieldhub.core.records import Priority, Record, stable_id
from fieldhub.core.registry import AdminCode, Device, Registry
from fieldhub.hub import SECTIONS, load_config, sample_config
from fieldhub.sinks.store import LocalStore


# ----------------------------------------------------------------------------- records
def test_record_ids_are_stable_and_distinct() -> None:
    a = Record.make("rain", "rg-1", 10, {"mm": 1.5}, source="mqtt", key=7)
    b = Record.make("rain", "rg-1", 99, {"mm": 2.0}, source="mqtt", key=7)
    c = Record.make("rain", "rg-1", 10, {"mm": 1.5}, source="mqtt", key=8)
    assert a.id == b.id == stable_id("mqtt", "rg-1", "rain", 7)
    assert a.id != c.id
    assert Record.from_json(a.to_json()) == a


@pytest.mark.parametrize("bad", [
    dict(kind="Bad Kind", fields={"v": 1}), dict(kind="ok", fields={}),
    dict(kind="ok", fields={"v": [1]}), dict(kind="ok", fields={"v": float("nan")}),
])
def test_record_validation(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Record.make(bad["kind"], "d", 1, bad["fields"])


def test_priority_classes_order() -> None:
    names = [p.label for p in sorted(Priority)]
    assert names == ["alarm", "command", "drill", "position", "telemetry", "bulk"]
    assert Priority.parse("POSITION") is Priority.POSITION
    with pytest.raises(ValidationError):
        Priority.parse("urgent")


# ----------------------------------------------------------------------------- config
def test_config_layers_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[log]\ndisk_cap = "1GiB"\ncommit_max = 10\n[store]\nretention = "7d"\n')
    cfg = load_config(f, {"log.commit_max": "20"}, env={"FIELDHUB_LOG_DISK_CAP": "512MiB"})
    assert cfg.log.disk_cap == 512 * 1024**2  # env beats file
    assert cfg.log.commit_max == 20  # flag beats file
    assert cfg.store.retention == 7 * 86400


@pytest.mark.parametrize("text, key, expected", [
    ('[log]\ndisk_capp = 1\n', "log.disk_capp", "one of"),
    ('[log]\ndisk_cap = "lots"\n', "log.disk_cap", "a size"),
    ('[log]\ncommit_max = "x"\n', "log.commit_max", "an integer"),
    ('[nope]\na = 1\n', "nope", "one of"),
    ('[log\n', None, "TOML"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str, key: str | None,
                                                   expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    msg = str(err.value)
    assert str(f) in msg and expected in msg
    if key:
        assert key in msg


def test_sample_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    text = sample_config()
    f = tmp_path / "s.toml"
    f.write_text(text)
    load_config(f, env={})  # loads as is
    for name, ref in config.all_sections(SECTIONS).items():
        cls = config.section_class(ref)
        for field in cls.__dataclass_fields__:
            assert f"# {field} = " in text or f"# {field} =" in text, f"{name}.{field} undocumented"


# ----------------------------------------------------------------------------- admin codes, registry
@pytest.mark.parametrize("code, level", [
    ("420000000000", "province"), ("420100000000", "city"), ("420102000000", "county"),
    ("420102001000", "township"), ("420102001001", "village"), ("110101001001", "village"),
])
def test_admin_code_levels(code: str, level: str) -> None:
    assert AdminCode.parse(code).level == level


@pytest.mark.parametrize("code", ["42010200100", "4201020010011", "99010200100a", "990102001001",
                                  "420002001001", "420100001000", ""])
def test_admin_code_rejects(code: str) -> None:
    with pytest.raises(ValidationError):
        AdminCode.parse(code)


def test_registry_csv_roundtrip_and_atomic_import(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.add(Device("rg-1", "rain_gauge", "420102001001", unit="村委会", transport={"port": "/dev/ttyUSB0"}))
    reg.add(Device("gnss-1", "gnss", "420102000000"))
    text = reg.export_csv()
    other = Registry(tmp_path / "r2.db")
    assert other.import_csv(text) == 2
    strip = lambda d: {**d.to_dict(), "created": 0}  # noqa: E731
    assert strip(other.get("rg-1")) == strip(reg.get("rg-1"))
    assert other.get("rg-1").tags()["level"] == "village"
    bad = text + "bad-1,rain_gauge,12345,,,,\n"
    third = Registry(tmp_path / "r3.db")
    with pytest.raises(ValidationError, match="line 4"):
        third.import_csv(bad)
    assert third.all() == []  # nothing half-imported
    with pytest.raises(ValidationError, match="already exists"):
        reg.add(Device("rg-1", "rain_gauge", "420102001001"))


def test_registry_sees_changes_from_another_process_view(tmp_path: Path) -> None:
    hub_view = Registry(tmp_path / "r.db")
    assert hub_view.get("x") is None
    Registry(tmp_path / "r.db").add(Device("x", "gnss", "420102001001"))
    assert hub_view.get("x") is not None


# ----------------------------------------------------------------------------- store, consumer
def test_store_queries_by_kind_device_time_and_retention(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s.db")
    now = time.time_ns()
    rows = [Record.make("rain", f"rg-{i % 2}", now - i * 60_000_000_000, {"mm": i}, source="t", key=i)
            for i in range(100)]
    store.write(rows)
    store.write(rows[:10])  # idempotent
    assert sum(1 for _ in store.query("rain")) == 100
    assert sum(1 for _ in store.query("rain", device="rg-1")) == 50
    recent = list(store.query("rain", since=now - 10 * 60_000_000_000))
    assert len(recent) == 11 and recent[0].ts < recent[-1].ts
    store.retention = 3600
    assert store.purge(now) == 39  # i = 61..99 are older than an hour
    assert sum(1 for _ in store.query()) == 61


class CountingSink:
    name = "counting"

    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[str] = []
        self.fail_times = fail_times

    def write(self, records) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("destination down")
        self.seen.extend(r.id for r in records)

    def close(self) -> None:
        pass


def _drain(runner: ConsumerRunner, expect: int, sink: CountingSink, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.seen) < expect and time.monotonic() < deadline:
        time.sleep(0.02)


def test_consumer_retries_and_never_redelivers_after_clean_restart(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    sink = CountingSink(fail_times=2)
    runner = ConsumerRunner(log, sink, batch=50)
    runner.start()
    log.append([Record.make("t", "d", i, {"v": i}, key=i) for i in range(120)])
    _drain(runner, 120, sink)
    runner.stop()
    assert runner.stats["errors"] == 2 and len(sink.seen) == 120
    log.close()
    log = DurableLog(tmp_path / "log.db")
    sink2 = CountingSink()
    runner = ConsumerRunner(log, sink2, batch=50)
    runner.start()
    log.append([Record.make("t", "d", i, {"v": i}, key=i) for i in range(120, 130)])
    _drain(runner, 10, sink2)
    time.sleep(0.3)
    runner.stop()
    assert len(sink2.seen) == 10  # nothing from before the clean restart comes again
    assert set(sink.seen).isdisjoint(sink2.seen)
    log.close()


def test_dead_consumer_does_not_block_others(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    dead = ConsumerRunner(log, type("Dead", (CountingSink,), {"name": "dead"})(fail_times=10**9))
    live_sink = CountingSink()
    live = ConsumerRunner(log, live_sink)
    dead.start()
    live.start()
    log.append([Record.make("t", "d", i, {"v": i}, key=i) for i in range(300)])
    _drain(live, 300, live_sink)
    assert len(live_sink.seen) == 300
    assert sum(dead.cursor.backlog().values()) == 300
    stop = threading.Thread(target=dead.stop)
    stop.start()
    live.stop()
    stop.join(35)
    log.close()


def test_device_states_from_data_and_presence(tmp_path: Path) -> None:
    now = time.time_ns()
    s = 1_000_000_000
    store = LocalStore(tmp_path / "s.db")
    store.write([
        Record.make("rain", "a", now - 5 * s, {"mm": 1}, key=1),  # reporting
        Record.make("rain", "b", now - 5 * s, {"mm": 1}, key=1),  # reported, then its last will
        Record.make("presence", "b", now - 2 * s, {"online": False, "reason": "will"}, key=2),
        Record.make("rain", "c", now - 3600 * s, {"mm": 1}, key=1),  # silent for an hour
        Record.make("presence", "d", now - 1 * s, {"online": True, "reason": "port open"}, key=1),
        Record.make("presence", "e", now - 9 * s, {"online": False, "reason": "unplugged"}, key=1),
        Record.make("rain", "e", now - 1 * s, {"mm": 2}, key=2),  # came back: data is newer
    ])
    states = LocalStore(tmp_path / "s.db", readonly=True).device_states(["a", "b", "c", "d", "e", "f"], now)
    assert states == {"a": "online", "b": "offline", "c": "offline", "d": "online", "e": "online",
                      "f": "offline"}
