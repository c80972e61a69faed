"""A process that interrupts its own store calls (SIGINT, as Ctrl-C does) at random moments, and
prints what each interrupt came out as: ``python -m tests.interrupting URL TRIALS``.

Prints one JSON object: how many times each exception reached the caller (``"KeyboardInterrupt"``
when the interrupt surfaced as itself; an error also with its message's first line); ``"late"``
counts signals that landed after their trial had already ended.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sys
import threading
import time

from sqlalchemy import Connection, text

from statemachine import Store


def _select(conn: Connection) -> object:
    return conn.execute(text("SELECT 1")).all()


def main(url: str, trials: int) -> None:
    store = Store(url)
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(trials):
        fire = threading.Timer(random.uniform(0.0005, 0.01), os.kill,
                               (os.getpid(), signal.SIGINT))
        try:
            fire.start()
            while True:
                store.transaction(_select)
        except BaseException as e:
            # What reached the caller (a database error names its message too).
            seen[type(e).__name__ if not isinstance(e, Exception)
                 else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"] += 1
        try:
            fire.join()
            time.sleep(0.002)
        except KeyboardInterrupt:
            seen["late"] += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
