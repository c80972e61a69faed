"""Ctrl-C stays Ctrl-C: `interrupt_behind` finds the interrupt under an error raised while it
unwound, so that the store raises the interrupt instead of a database error (it surfaced now
and then as ``StoreError: database error: can't change 'autocommit' now``: SQLAlchemy's
pre-ping restoring psycopg's autocommit on a connection the interrupt left mid-query, and the
CLI then exited 1 instead of 130)."""

from __future__ import annotations

import pytest

from statemachine._store._faults import interrupt_behind


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
