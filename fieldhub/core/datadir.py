"""The data dir: the names of the files the hub keeps there, and its one-hub-at-a-time lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from fieldhub.core.errors import StorageError

LOG_FILE = "log.db"  #: the durable log
STORE_FILE = "store.db"  #: the local time-series store
REGISTRY_FILE = "registry.db"  #: devices
OPLOG_FILE = "oplog.jsonl"  #: the operator log
LOCK_FILE = "hub.lock"  #: held by the running hub (flock), holds its pid
HUB_INFO_FILE = "hub.json"  #: who last ran here: hub id, version, pid, start time


#: permission bits the data dir and its files never grant: nothing to others, no writing by the
#: group (directories 0750, files 0640 at most). The databases hold positions, contacts and alarms.
PRIVATE_MASK = 0o027


def make_private(data_dir: Path) -> None:
    """Keep the data dir private: 0750 for it, 0640 at most for what is in it (files an older
    version left world-readable are tightened), and this process's umask so that every file it
    creates from now on (SQLite's -wal and -shm, tlogs, hub.json) is born that way too."""
    old = os.umask(PRIVATE_MASK)
    os.umask(old | PRIVATE_MASK)
    uid = os.geteuid()
    for path in (data_dir, *data_dir.iterdir()):
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != uid or not st.st_mode & PRIVATE_MASK:
                continue
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~PRIVATE_MASK)
        except OSError:
            continue  # not ours to change, or gone: the next start tries again


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir if needed (0750, its files 0640: ``make_private``) and prove it is
    writable, with a one-line error if not."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        make_private(data_dir)
        probe = data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"data dir {data_dir} is not writable: {exc.strerror or exc} "
                           f"/ 数据目录不可写") from None
    return data_dir


def take_lock(data_dir: Path) -> int:
    """Hold the data dir's lock (one hub per data dir); returns the fd, released on close."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StorageError(f"a hub (pid {other}) is running with data dir {data_dir}; stop it first "
                           f"/ 另一个 hub 正在使用该数据目录") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


@contextlib.contextmanager
def hub_lock(data_dir: Path) -> Iterator[None]:
    """For offline maintenance: fails clearly while a hub runs on ``data_dir``."""
    fd = take_lock(prepare_data_dir(data_dir))
    try:
        yield
    finally:
        os.close(fd)
