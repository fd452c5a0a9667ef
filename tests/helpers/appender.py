"""A hub process under sustained appends, for kill -9 tests.

Runs the real Hub (durable log + local store consumer) on DATA_DIR and appends vehicle
records with keys START, START+1, ... in batches; after each batch is durable it prints
``ACK <first> <last>`` — the acknowledgement a source would get. Stops on SIGTERM.
"""

from __future__ import annotations

import sys
import threading

from fieldhub.hub import Hub, load_config
from simulators.loadgen import vehicle_records


def main() -> None:
    data_dir, start = sys.argv[1], int(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 10**12
    cfg = load_config(None, {"hub.data_dir": data_dir, "hub.id": "crash-test",
                             "log.compact_interval": "1s", "store.batch": 500}, env={})
    hub = Hub(cfg)
    stop = threading.Event()
    out = sys.stdout
    lock = threading.Lock()

    def produce() -> None:
        seq = start
        sem = threading.BoundedSemaphore(8)  # a few batches in flight, like a broker's window
        while not stop.is_set() and seq < limit:
            n = min(200, limit - seq)
            batch = vehicle_records("crash-test", seq, n)
            first, last = seq, seq + n - 1
            sem.acquire()

            def acked(result, error, first=first, last=last):
                sem.release()
                if error is None:
                    with lock:
                        out.write(f"ACK {first} {last}\n")
                        out.flush()
            hub.log.append(batch, callback=acked)
            seq += n
        print("DONE", flush=True)

    threading.Thread(target=produce, daemon=True).start()
    hub.run(stop)


if __name__ == "__main__":
    main()
