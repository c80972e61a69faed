"""The claim's low-water mark: where each claim starts reading the due index, how the rows it
took move the mark, and when a full sweep comes instead (see `statemachine._claimmark`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from statemachine._claimmark import ClaimMark
from statemachine._records import ClaimedRow

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def row(due: datetime | None) -> ClaimedRow:
    return ClaimedRow(id=uuid.uuid4(), machine="m", state="S", data={}, version=1,
                      entered_version=1, attempt=1, lease_token="t", previous_status="ready",
                      external_change=False, due_at=due)


class Clocks:
    def __init__(self) -> None:
        self.mono = 0.0
        self.db = T0

    def mark(self) -> ClaimMark:
        return ClaimMark(margin=5.0, sweep_interval=10.0, database_now=lambda: self.db,
                         monotonic=lambda: self.mono)


def test_the_first_claim_sweeps_and_an_empty_sweep_marks_the_database_time_less_the_margin(
) -> None:
    clocks = Clocks()
    mark = clocks.mark()
    ticket, before = mark.next()
    assert ticket.since is None
    assert before == T0
    mark.claimed(ticket, [], before)
    assert mark.mark == T0 - timedelta(seconds=5)
    ticket, before = mark.next()
    assert ticket.since == T0 - timedelta(seconds=5)
    assert before is None


def test_claimed_rows_move_the_mark_up_to_their_latest_due_time_less_the_margin() -> None:
    clocks = Clocks()
    mark = clocks.mark()
    sweep, before = mark.next()
    mark.claimed(sweep, [], before)
    ticket, _ = mark.next()
    mark.claimed(ticket, [row(T0 + timedelta(seconds=30)), row(T0 + timedelta(seconds=20))], None)
    assert mark.mark == T0 + timedelta(seconds=25)
    # Nothing claimed: nothing learnt, the mark stays; an older batch never lowers it.
    ticket, _ = mark.next()
    mark.claimed(ticket, [], None)
    mark.claimed(ticket, [row(T0)], None)
    assert mark.mark == T0 + timedelta(seconds=25)


def test_a_sweep_comes_every_interval_and_sets_the_mark_from_what_it_found() -> None:
    clocks = Clocks()
    mark = clocks.mark()
    sweep, before = mark.next()
    mark.claimed(sweep, [row(T0 + timedelta(minutes=10))], before)
    assert mark.mark == T0 + timedelta(minutes=10, seconds=-5)
    clocks.mono = 9.9
    assert mark.next()[0].since is not None
    clocks.mono = 10.0
    sweep, before = mark.next()
    assert sweep.since is None
    # Another thread claiming meanwhile reads from the mark: one sweep per interval.
    assert mark.next()[0].since is not None
    # The sweep found stragglers far below the mark: the mark comes down to them.
    mark.claimed(sweep, [row(T0 - timedelta(hours=1))], before)
    assert mark.mark == T0 - timedelta(hours=1, seconds=5)
    assert mark.sweeps == 2


def test_a_claim_that_began_before_a_sweep_ended_does_not_move_the_mark() -> None:
    clocks = Clocks()
    mark = clocks.mark()
    sweep, before = mark.next()
    mark.claimed(sweep, [row(T0)], before)
    stale, _ = mark.next()
    clocks.mono = 20.0
    sweep, before = mark.next()
    mark.claimed(sweep, [row(T0 - timedelta(hours=2))], before)
    mark.claimed(stale, [row(T0 + timedelta(hours=1))], None)
    assert mark.mark == T0 - timedelta(hours=2, seconds=5)


def test_sweep_soon_makes_the_next_claim_a_sweep() -> None:
    clocks = Clocks()
    mark = clocks.mark()
    sweep, before = mark.next()
    mark.claimed(sweep, [], before)
    assert mark.next()[0].since is not None
    mark.sweep_soon()
    assert mark.next()[0].since is None
