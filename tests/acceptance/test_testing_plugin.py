"""The pytest plugin is loaded by pytest on its own (entry point `pytest11`) in any project that
installs statemachine: its fixtures work, on SQLite and on PostgreSQL, and its hypothesis profiles
are chosen by an environment variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from statemachine import Store
from statemachine.testing import FakeClock

pytestmark = pytest.mark.slow  # pytest runs in subprocesses

ROOT = Path(__file__).resolve().parents[2]

A_USERS_TESTS = '''
from hypothesis import settings
from machines.order import FakePaymentGateway, Order, OrderPlaced
from statemachine import Client


def test_the_profile(request):
    assert settings().max_examples == int(request.config.getoption("--expect-examples"))


def test_a_harness(sm_harness, sm_clock, sm_store):
    h = sm_harness([Order(FakePaymentGateway())])
    wid = h.start(OrderPlaced("o-1", 100))
    assert h.run_until_idle().idle
    assert h.state(wid).tracking == "TRK-o-1"
    assert h.clock is sm_clock and h.store is sm_store
    print("DIALECT", sm_store.dialect)


def test_a_worker(sm_worker, sm_store):
    sm_worker([Order(FakePaymentGateway(flaky=False))])
    client = Client(sm_store, [Order])
    wid = client.start(Order, OrderPlaced("o-2", 100))
    assert client.wait(wid, timeout=60).status == "done"
'''

CONFTEST = '''
def pytest_addoption(parser):
    parser.addoption("--expect-examples")
'''


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_users.py").write_text(A_USERS_TESTS)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CI", "STATEMACHINE_HYPOTHESIS_PROFILE")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-n", "0", *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_the_fixtures_and_the_fast_profile_on_sqlite(tmp_path: Path) -> None:
    done = run(tmp_path, "--expect-examples=50")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    assert "DIALECT sqlite" in done.stdout


def test_the_store_on_postgresql_by_environment_variable_and_the_thorough_profile_in_ci(
        tmp_path: Path, pg_database: object) -> None:
    url = str(pg_database.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    done = run(tmp_path, "--expect-examples=500", STATEMACHINE_TEST_DATABASE_URL=url, CI="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DIALECT postgresql" in done.stdout


def test_a_bad_profile_name_is_refused(tmp_path: Path) -> None:
    done = run(tmp_path, STATEMACHINE_HYPOTHESIS_PROFILE="fastest")
    assert done.returncode != 0
    assert "STATEMACHINE_HYPOTHESIS_PROFILE='fastest': use fast, thorough or none" in \
        done.stdout + done.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_plugin_fixtures_live_beside_the_suites_own(store: Store, sm_store: Store) -> None:
    assert store is not sm_store
    assert isinstance(sm_store.clock, FakeClock)
    assert not isinstance(store.clock, FakeClock)
