"""Group commit: the commits that a worker's handler threads have ready at the same time go to
the database together (see `_store._grouped`), one statement instead of one each.

No thread waits for company. A thread whose commit is ready queues it; if no group is on its
way, it sends what is queued (its own and whatever else is there) at once, alone or not. While
that group is on its way, the commits that become ready queue up, and the first of their threads
to be woken sends them as the next group. So a lone thread commits as it would without grouping,
and under load each round trip carries every commit that became ready during the one before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ._records import Change, Committed
from ._store._grouped import Outcome, groupable

__all__ = ["GroupCommit"]

# The most commits one group carries (the statement's JSON parameter stays small).
MAX_GROUP = 64
# Groups on their way at once: more than one keeps the server's cores busy while a group waits
# for its reply.
SENDERS = 2


class _Pending:
    """A change waiting to be committed, and the lock its thread sleeps on (held until the
    thread is to wake: its change is done, or it is its turn to send the queue)."""

    __slots__ = ("change", "done", "outcome", "signalled", "taken", "wake")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.taken = False  # in a group on its way
        self.done = False
        self.outcome: Outcome | BaseException = None
        self.wake = threading.Lock()
        self.wake.acquire()
        self.signalled = False


class GroupCommit:
    """Commits changes the way `Statements.commit` does, grouping those of concurrent threads.
    Shared by a worker's handler threads."""

    def __init__(self, commit_one: Callable[[Change, float], Committed | None],
                 commit_group: Callable[[Sequence[Change], float], list[Outcome]],
                 *, max_group: int = MAX_GROUP, senders: int | None = None) -> None:
        self._commit_one = commit_one
        self._commit_group = commit_group
        self.max_group = max_group
        self.senders = SENDERS if senders is None else senders
        # Guards everything below and every `_Pending`'s fields. Each thread sleeps on its own
        # lock, so a group's reply wakes only the threads whose changes it carried.
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._sending = 0  # groups on their way now
        # Figures for tests and the benchmark: groups sent, and the changes they carried.
        self.groups = 0
        self.grouped = 0
        self.largest = 0

    def commit(self, change: Change, *, retry_for: float = 0.0) -> Committed | None:
        """What `Statements.commit(change)` returns (or raises), committed with the changes
        other threads have ready now. A change that cannot be grouped (it consumes an event,
        starts children, ...) is committed alone, in its own transaction."""
        if not groupable(change):
            return self._commit_one(change, retry_for)
        mine = _Pending(change)
        with self._lock:
            self._queue.append(mine)
            batch = self._take() if self._sending < self.senders else None
        while True:
            if batch is None:
                mine.wake.acquire()
                with self._lock:
                    mine.signalled = False
                    if mine.done:
                        break
                    if mine.taken or self._sending >= self.senders:
                        continue  # another thread took it, or its turn passed: sleep again
                    batch = self._take()
            self._send(batch, retry_for)
            batch = None
            with self._lock:
                if mine.done:
                    break
        if isinstance(mine.outcome, BaseException):
            raise mine.outcome
        return mine.outcome

    def _take(self) -> list[_Pending]:
        """The next group to send (under `_lock`): this thread becomes a sender."""
        self._sending += 1
        batch = self._queue[:self.max_group]
        del self._queue[:self.max_group]
        for p in batch:
            p.taken = True
        return batch

    def _send(self, batch: list[_Pending], retry_for: float) -> None:
        outcomes: Sequence[Outcome | BaseException] = ()
        try:
            outcomes = self._commit_group([p.change for p in batch], retry_for)
        except BaseException as e:  # a bug, or an interrupt: every waiter learns of it
            outcomes = [e] * len(batch)
            raise
        finally:
            with self._lock:
                for p, outcome in zip(batch, outcomes, strict=True):
                    p.outcome = outcome
                    p.done = True
                    _signal(p)
                self._sending -= 1
                self.groups += 1
                self.grouped += len(batch)
                self.largest = max(self.largest, len(batch))
                if self._queue:  # the oldest queued thread sends the next group
                    _signal(self._queue[0])


def _signal(p: _Pending) -> None:
    """Wake `p`'s thread (under `GroupCommit._lock`); a thread not asleep wakes at once when it
    next sleeps, and re-checks why."""
    if not p.signalled:
        p.signalled = True
        p.wake.release()
