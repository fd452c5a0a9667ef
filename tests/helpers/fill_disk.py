"""Append until the file-size limit (a stand-in for a full disk) stops the log; report acks."""

from __future__ import annotations

import resource
import signal
import sys

from fieldhub.core.errors import StorageError
from fieldhub.core.log import DurableLog
from fieldhub.core.records import Record


def main() -> None:
    path, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    log = DurableLog(path, compact_interval=3600)
    i = 0
    while True:
        batch = [Record.make("t", "d", i + k, {"v": i + k, "pad": "x" * 200}, key=i + k) for k in range(50)]
        try:
            log.append(batch)
        except StorageError as exc:
            print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
            break
        print(f"ACK {i + 49}", flush=True)
        i += 50
    # the log keeps working after the error: a later append either fits or fails cleanly
    try:
        log.append([Record.make("t", "d", 10**9, {"v": 1}, key=10**9)])
        print("STILL-RUNNING accepted", flush=True)  # freed pages after the rollback had room
    except StorageError:
        print("STILL-RUNNING refused", flush=True)
    log.close()


if __name__ == "__main__":
    main()
