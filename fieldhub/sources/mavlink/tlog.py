"""Rotating ``.tlog`` files per drone (8-byte big-endian µs timestamp + packet), bounded in total size."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

_TS = struct.Struct(">Q")


class TlogStore:
    """One open tlog per drone under ``root/<device>/``; a new file past ``max_file``; oldest files
    deleted once all of them exceed ``max_total`` (the open ones are never deleted)."""

    def __init__(self, root: Path, *, max_file: int = 16 * 1024**2, max_total: int = 512 * 1024**2) -> None:
        self.root = root
        self.max_file = max_file
        self.max_total = max_total
        self._files: dict[str, tuple[BinaryIO, Path]] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stats = {"packets": 0, "bytes": 0, "files_rotated": 0, "files_deleted": 0, "write_errors": 0}

    def write(self, device: str, ts_us: int, packet: bytes | bytearray) -> None:
        """Append one packet (called with the hub's ingest lock held, or from one thread)."""
        entry = self._files.get(device)
        if entry is None or self._sizes[device] >= self.max_file:
            entry = self._rotate(device)
            if entry is None:
                return
        f = entry[0]
        try:
            f.write(_TS.pack(ts_us))
            f.write(packet)
        except OSError:
            self.stats["write_errors"] += 1
            return
        n = 8 + len(packet)
        self._sizes[device] += n
        self.stats["packets"] += 1
        self.stats["bytes"] += n

    def write_raw(self, device: str, data: bytes, packets: int) -> None:
        """Append ready-made tlog bytes (timestamp + packet, repeated) for ``packets`` packets."""
        entry = self._files.get(device)
        if entry is None or self._sizes[device] >= self.max_file:
            entry = self._rotate(device)
            if entry is None:
                return
        try:
            entry[0].write(data)
        except OSError:
            self.stats["write_errors"] += 1
            return
        self._sizes[device] += len(data)
        self.stats["packets"] += packets
        self.stats["bytes"] += len(data)

    def _rotate(self, device: str) -> tuple[BinaryIO, Path] | None:
        with self._lock:
            old = self._files.pop(device, None)
            if old is not None:
                old[0].close()
                self.stats["files_rotated"] += 1
            d = self.root / device
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            try:
                d.mkdir(parents=True, exist_ok=True)
                path = d / f"{device}-{stamp}.tlog"
                n = 1
                while path.exists():
                    n += 1
                    path = d / f"{device}-{stamp}-{n}.tlog"
                f = open(path, "ab", buffering=256 * 1024)
            except OSError:
                self.stats["write_errors"] += 1
                return None
            self._files[device] = (f, path)
            self._sizes[device] = 0
        self.enforce_cap()
        return self._files[device]

    def flush(self) -> None:
        for f, _ in list(self._files.values()):
            try:
                f.flush()
            except (OSError, ValueError):
                self.stats["write_errors"] += 1

    def enforce_cap(self) -> None:
        """Delete the oldest closed tlogs until the total fits ``max_total``."""
        with self._lock:
            open_paths = {p for _, p in self._files.values()}
            files = sorted(self.root.glob("*/*.tlog"), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for p in files:
                if total <= self.max_total:
                    break
                if p in open_paths:
                    continue
                size = p.stat().st_size
                try:
                    p.unlink()
                except OSError:
                    continue
                total -= size
                self.stats["files_deleted"] += 1

    def files(self) -> list[Path]:
        return sorted(self.root.glob("*/*.tlog"))

    def close(self) -> None:
        with self._lock:
            for f, _ in self._files.values():
                try:
                    f.close()
                except OSError:
                    self.stats["write_errors"] += 1
            self._files.clear()

    def status(self) -> dict[str, Any]:
        files = self.files()
        return {"dir": str(self.root), "files": len(files),
                "disk_bytes": sum(p.stat().st_size for p in files if p.exists()), **self.stats}
