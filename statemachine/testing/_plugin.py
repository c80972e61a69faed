"""The pytest plugin (loaded by pytest through the ``pytest11`` entry point when statemachine is
installed): fixtures for testing workflows, and hypothesis profiles.

Fixtures (prefixed ``sm_`` so they never clash with a project's own):

- `sm_clock`: a `FakeClock`.
- `sm_store`: a migrated `Store` on `sm_clock`, fresh for each test: a SQLite file in the test's
  temporary directory, or, with ``--sm-database-url`` / ``STATEMACHINE_TEST_DATABASE_URL`` set
  to a PostgreSQL URL, a schema of its own in that database (dropped after the test).
- `sm_harness`: ``sm_harness([Order(gateway)])`` gives a `Harness` on `sm_store`.
- `sm_worker`: ``sm_worker([Order(gateway)])`` starts a real `Worker` on `sm_store` (stopped
  after the test).

Hypothesis profiles ``statemachine-fast`` (50 examples) and ``statemachine-thorough`` (500):
``STATEMACHINE_HYPOTHESIS_PROFILE=fast|thorough`` loads one; unset, ``thorough`` is loaded when
``CI`` is set and ``fast`` otherwise; ``none`` leaves hypothesis's settings alone. (A project's
conftest that loads its own profile still wins: it is read after plugins.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .._definition import Machine
from .._runtime import Worker
from .._store import Store
from ._clock import FakeClock
from ._harness import Harness

__all__ = ["sm_clock", "sm_harness", "sm_store", "sm_worker"]

URL_ENV = "STATEMACHINE_TEST_DATABASE_URL"
PROFILE_ENV = "STATEMACHINE_HYPOTHESIS_PROFILE"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("statemachine")
    group.addoption("--sm-database-url", default=None,
                    help=f"database for the sm_store fixture (default: ${URL_ENV}, else a "
                         "SQLite file per test); a PostgreSQL URL gets a schema per test")


def _load_profiles() -> None:
    """Register the profiles and load the chosen one. Run when pytest imports the plugin, which
    is before any conftest.py: a conftest that loads its own profile still has the last word."""
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:  # hypothesis is optional (the `testing` extra)
        return
    quick = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
    settings.register_profile("statemachine-fast", max_examples=50, deadline=None,
                              phases=quick)
    settings.register_profile("statemachine-thorough", max_examples=500, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    chosen = os.environ.get(PROFILE_ENV) or ("thorough" if os.environ.get("CI") else "fast")
    if chosen == "none":
        return
    if chosen not in ("fast", "thorough"):
        raise pytest.UsageError(f"{PROFILE_ENV}={chosen!r}: use fast, thorough or none")
    settings.load_profile(f"statemachine-{chosen}")


_load_profiles()


@pytest.fixture
def sm_clock() -> FakeClock:
    """A `FakeClock` (2030-01-01 UTC) for this test."""
    return FakeClock()


@pytest.fixture
def sm_store(request: pytest.FixtureRequest, sm_clock: FakeClock,
             tmp_path: Path) -> Iterator[Store]:
    """A fresh, migrated `Store` on `sm_clock` (SQLite, or the configured PostgreSQL)."""
    url = request.config.getoption("--sm-database-url") or os.environ.get(URL_ENV)
    if not url or make_url(url).get_backend_name() == "sqlite":
        store = Store(url or f"sqlite:///{tmp_path / 'statemachine.db'}", clock=sm_clock)
        store.migrate()
        yield store
        store.dispose()
        return
    schema = f"sm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    options = " ".join(filter(None, [str(make_url(url).query.get("options", "")),
                                     f"-csearch_path={schema}"]))
    scoped = make_url(url).update_query_dict({"options": options})
    store = Store(scoped.render_as_string(hide_password=False), clock=sm_clock)
    try:
        store.migrate()
        yield store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sm_harness(sm_store: Store) -> Iterator[Callable[..., Harness]]:
    """``sm_harness(machines, lease=30.0)``: a `Harness` running `machines` on `sm_store`."""
    made: list[Harness] = []

    def make(machines: Iterable[Machine | type[Machine]], *, lease: float = 30.0) -> Harness:
        harness = Harness(machines, store=sm_store, lease=lease)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def sm_worker(sm_store: Store) -> Iterator[Callable[..., Worker]]:
    """``sm_worker(machines, **options)``: a started `Worker` on `sm_store`, stopped after the
    test (options as `Worker` takes them)."""
    started: list[Worker] = []

    def start(machines: Iterable[Machine | type[Machine]], **options: object) -> Worker:
        worker = Worker(sm_store, machines, **options)  # type: ignore[arg-type]
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(grace=5.0)
