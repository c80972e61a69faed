"""Ctrl-C stays Ctrl-C: an interrupt that lands while a statement is on its way reaches the
caller as `KeyboardInterrupt`, never as a database error, whatever the clean-up it set off
raised after it. (It used to surface now and then as ``StoreError: database error: can't change
'autocommit' now``: SQLAlchemy's pre-ping restoring psycopg's autocommit on a connection the
interrupt left mid-query; the CLI then printed an error and exited 1 instead of 130.) And on
SQLite an interrupted statement no longer leaves the write lock held by the connection SQLAlchemy
closed, which made every later transaction wait for the garbage collector."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from statemachine._store._faults import interrupt_behind
from tests.procs import ROOT

TRIALS = 300


def test_an_interrupted_store_call_raises_the_interrupt(db_url: str) -> None:
    # A real process interrupting itself with real signals at random moments: before the fix,
    # about one interrupt in twelve on PostgreSQL came out as a StoreError, and SQLite hung.
    done = subprocess.run([sys.executable, "-m", "tests.interrupting", db_url, str(TRIALS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout.splitlines()[-1])
    late = outcomes.pop("late", 0)
    assert sum(outcomes.values()) == TRIALS, (outcomes, late)
    assert outcomes == {"KeyboardInterrupt": TRIALS}, outcomes


def _raised_while(handling: BaseException, raise_: BaseException) -> BaseException:
    try:
        try:
            raise handling
        except BaseException:
            raise raise_  # noqa: B904 (the implicit context is what is under test)
    except BaseException as e:
        return e


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(1)])
def test_interrupt_behind_finds_the_interrupt_under_a_clean_up_error(
        interrupt: BaseException) -> None:
    clean_up = _raised_while(interrupt, RuntimeError("can't change 'autocommit' now"))
    wrapped = _raised_while(ValueError("outer"), RuntimeError("store error"))
    wrapped.__cause__ = clean_up
    assert interrupt_behind(clean_up) is interrupt
    assert interrupt_behind(wrapped) is interrupt
    assert interrupt_behind(interrupt) is interrupt


def test_interrupt_behind_is_none_for_an_ordinary_error_and_a_cycle() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert interrupt_behind(first) is None
    assert interrupt_behind(_raised_while(ValueError("x"), RuntimeError("y"))) is None
