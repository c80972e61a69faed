"""`Limit(count=N, per=timedelta(...))`, a window of any length, held by a real worker on every
backend (the start times measured in this process, as in `test_limits`)."""

from __future__ import annotations

from datetime import timedelta

import attrs

from statemachine import Client, Context, Limit, Machine, Store, Worker, step
from tests.integration.test_limits import Recorder, most_surely_within

TWO_PER_1500_MS = Limit(key="windowed", count=2, per=timedelta(milliseconds=1500))


@attrs.frozen
class Ask:
    i: int


@attrs.frozen
class Asked:
    i: int


class Windowed(Machine):
    initial = Ask
    terminal = (Asked,)

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    @step(limit=TWO_PER_1500_MS)
    def ask(self, state: Ask, ctx: Context) -> Asked:
        self.rec.run("windowed", 0.0)
        return Asked(state.i)


def test_count_per_window_holds_in_a_worker(store: Store) -> None:
    rec = Recorder()
    rec.watch_grants(store)
    client = Client(store, [Windowed])
    with Worker(store, [Windowed(rec)], concurrency=6, poll_interval=0.05):
        wids = [client.start(Windowed, Ask(i)) for i in range(6)]
        for wid in wids:
            assert client.wait(wid, timeout=60).status == "done"
    count, window = TWO_PER_1500_MS.window
    assert (count, window) == (2, 1.5)
    brackets = rec.brackets("windowed")
    assert len(brackets) == 6
    assert most_surely_within(brackets, window) <= count, sorted(brackets)
    # Six starts at two per 1.5 s span at least two full windows: the last start came no
    # sooner than 3 s after the first granting call began (less 10 ms for the database's and
    # this process's clocks to differ in rate).
    first_call = min(lo for lo, _ in brackets)
    last_start = max(hi for _, hi in brackets)
    assert last_start - first_call >= 2 * window - 0.01
