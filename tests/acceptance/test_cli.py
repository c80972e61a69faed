"""Acceptance tests of the `statemachine` command, run as a real subprocess on every backend.

Each test drives the CLI the way an operator does (``python -m statemachine --db URL ...``, and the
installed ``statemachine`` script), with a real worker process where work has to run. Commands
that do not depend on each other run concurrently, to keep the file fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from statemachine import Client, Store, WorkflowInfo
from tests.conftest import _drop_schema, backend_schema_url

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("statemachine")
APP = "machines.order:Order"
ORDER = '{"order_id": "x", "amount_cents": 5}'
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Result = subprocess.CompletedProcess[str]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment, minus any database URL it may carry, plus the repository on the
    path (the demo machines live in `machines/`, which is not installed)."""
    env = {k: v for k, v in os.environ.items() if k != "STATEMACHINE_DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def sm(
    *args: str,
    db: str | None,
    expect: int = 0,
    script: bool = False,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``statemachine [--db db] *args`` and check its exit code."""
    cmd = [str(SCRIPT)] if script else [sys.executable, "-m", "statemachine"]
    if db is not None:
        cmd += ["--db", db]
    result = subprocess.run(
        [*cmd, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
        timeout=240, check=False)  # a bulk command over 2,000 rows on a loaded 2-core machine
    assert result.returncode == expect, (
        f"statemachine {' '.join(args)} exited {result.returncode}, expected {expect}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def sm_all(db: str, *calls: tuple[str, ...] | tuple[tuple[str, ...], int]) -> list[Result]:
    """Run several independent commands at once: each call is its args, or (args, exit code)."""
    jobs = [(call[0], call[1]) if isinstance(call[0], tuple) else (call, 0) for call in calls]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(sm, *args, db=db, expect=code) for args, code in jobs]
        return [f.result() for f in futures]


def start_args(data: str = ORDER, *extra: str) -> tuple[str, ...]:
    return ("start", "order", "--data", data, "--app", APP, *extra)


def started(result: Result) -> str:
    """The workflow id `start` printed."""
    workflow_id = result.stdout.strip()
    assert UUID_RE.match(workflow_id), result.stdout
    return workflow_id


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """The CLI's contract for a failed command: one readable line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def fields(show_output: str) -> dict[str, Any]:
    """`statemachine show --json` output."""
    return dict(json.loads(show_output))


def history_rows(history_output: str) -> list[dict[str, Any]]:
    """`statemachine history --json` entries."""
    return list(json.loads(history_output)["history"])


def listed(list_output: str) -> dict[str, dict[str, Any]]:
    """`statemachine list --json` rows by id."""
    return {r["id"]: r for r in json.loads(list_output)["workflows"]}


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    """An in-process client on the test's database, for waiting and checking."""
    store = Store(db_url)
    yield Client(store)
    store.dispose()


def wait_for(client: Client, workflow_id: str, status: str, timeout: float = 30.0) -> WorkflowInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(workflow_id)
        if info.status == status:
            return info
        assert time.monotonic() < deadline, f"workflow still {info.status}: {info}"
        time.sleep(0.05)


def park_by_sql(db_url: str, workflow_id: str, *, state: str = "OrderPlaced",
                data: str = ORDER) -> None:
    """Put a workflow in the parked status by hand, as if its step had failed for good."""
    store = Store(db_url)
    with store.engine.begin() as conn:
        conn.execute(text(
            "UPDATE sm_workflows SET state = :state, data = :data, status = 'failed', "
            "last_error = 'parked by the test', wake_at = NULL, version = version + 1 "
            "WHERE id = :id"), {"id": workflow_id, "state": state, "data": data})
    store.dispose()


# -- commands that need no database, or only SQLite ----------------------------------------------


def test_help() -> None:
    out = sm("--help", db=None).stdout
    for command in ("migrate", "worker", "start", "list", "show", "history", "retry", "cancel",
                    "demo"):
        assert command in out
    assert "Usage: statemachine" in sm("--help", db=None, script=True).stdout


def test_start_rejects_bad_input(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'sm.db'}"
    sm("migrate", db=db)
    (not_json, wrong_type, missing, unknown, unknown_with_app, no_module, not_uuid, no_such,
     listing) = sm_all(
        db,
        (start_args("{order_id: x}"), 2),
        (start_args('{"order_id": "x", "amount_cents": "five"}'), 1),
        (start_args('{"order_id": "x"}'), 1),
        (("start", "nope", "--data", "{}"), 1),
        (("start", "nope", "--data", "{}", "--app", APP), 1),
        (("start", "order", "--app", "no_such_module:Order"), 2),
        (("show", "not-a-uuid"), 1),
        (("show", str(uuid.uuid4())), 1),
        ("list",),
    )
    assert "--data" in not_json.stderr
    assert "not JSON" in not_json.stderr
    assert "Traceback" not in not_json.stderr
    assert_one_line_error(wrong_type, "OrderPlaced", "data.amount_cents", "expected int")
    assert_one_line_error(missing, "data.amount_cents", "required field missing")
    assert_one_line_error(unknown, "unknown machine 'nope'", "--app")
    assert_one_line_error(unknown_with_app, "unknown machine 'nope'")
    assert "no_such_module" in no_module.stderr
    assert "Traceback" not in no_module.stderr
    assert_one_line_error(not_uuid, "not a workflow id")
    assert_one_line_error(no_such, "no workflow")
    assert listing.stdout.splitlines()[1:] == ["showing 0 of 0"]  # nothing was started


def test_demo(tmp_path: Path) -> None:
    out = sm("demo", db=f"sqlite:///{tmp_path / 'demo.db'}", cwd=tmp_path).stdout
    assert "OrderPlaced -> Charged" in out
    assert "retry scheduled" in out
    assert "final states:" in out
    final = out.split("final states:")[1]
    assert "Confirmed" in final
    assert "PaymentFailed" in final
    assert "KIND" in out  # the history table closes the demo


def test_cancel_a_parked_workflow_whose_data_does_not_load(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'sm.db'}"
    sm("migrate", db=db)
    broken = started(sm(*start_args(), db=db))
    park_by_sql(db, broken, state="Charged", data='{"order_id": "x"}')
    assert sm("cancel", broken, "--app", APP, db=db).stdout.strip() == (
        f"workflow {broken} cancelled")


# -- every backend --------------------------------------------------------------------------------


def test_migrate_is_idempotent(db_url: str) -> None:
    store = Store(db_url)
    with store.engine.begin() as conn:  # the fixture migrated: start from an empty database
        for table in ("sm_history", "sm_workflows", "sm_migrations"):
            conn.execute(text(f"DROP TABLE {table}"))
    store.dispose()
    applied = sm("migrate", db=db_url).stdout.strip()
    assert applied.startswith("applied 0001"), applied
    assert sm("migrate", db=db_url).stdout.strip() == "schema is up to date"


def test_start_list_show_cancel(db_url: str, client: Client) -> None:
    first = started(sm(*start_args(), db=db_url, script=True))  # the installed script
    # Two starts with one key, at the same time: one workflow.
    keyed, again = map(started, sm_all(db_url, start_args(ORDER, "--key", "order-x"),
                                       start_args(ORDER, "--key", "order-x")))
    assert keyed == again
    assert keyed != first
    assert client.get(keyed).key == "order-x"

    listing, table, shown, history = sm_all(db_url, ("list", "--json"), ("list",),
                                            ("show", first, "--json"),
                                            ("history", first, "--json"))
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "MACHINE", "STATE", "STATUS"]
    rows = listed(listing.stdout)
    for workflow_id in (first, keyed):
        row = rows[workflow_id]
        assert [row[k] for k in ("machine", "state", "status", "version")] == [
            "order", "OrderPlaced", "ready", 1]
    info = fields(shown.stdout)
    assert (info["id"], info["state"], info["status"]) == (first, "OrderPlaced", "ready")
    assert info["data"] == {"order_id": "x", "amount_cents": 5, "card": "4242"}
    entry = history_rows(history.stdout)[0]
    assert [entry[k] for k in ("version", "kind", "to_state", "status", "attempt")] == [
        1, "start", "OrderPlaced", "ready", 0]

    cancelled = sm("cancel", keyed, "--app", APP, "--reason", "test says so", "--actor", "ann",
                   db=db_url).stdout
    assert cancelled.strip() == f"workflow {keyed} cancelled"
    assert [(h.kind, h.status, h.cause) for h in client.history(keyed)][-1] == (
        "cancel", "cancelled", "test says so (by ann)")
    cancel_again, retry_ready = sm_all(db_url, (("cancel", keyed), 1), (("retry", first), 1))
    assert_one_line_error(cancel_again, "it is cancelled")
    assert_one_line_error(retry_ready, "cannot retry", "it is ready")

    park_by_sql(db_url, first)
    assert sm("cancel", first, "--app", APP, db=db_url).stdout.strip() == (
        f"workflow {first} cancelled")
    cancelled_list = listed(sm("list", "--status", "cancelled", "--json", db=db_url).stdout)
    assert keyed in cancelled_list
    assert first in cancelled_list


def test_worker_runs_workflows_and_stops_on_sigterm(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    good, forced, doomed = map(started, sm_all(
        db_url, start_args(), start_args('{"order_id": "y", "amount_cents": 7}'), start_args()))
    # An operator forces the second workflow into Charged by SQL, with data missing a field: the
    # worker must record the external change and park this workflow alone.
    with client.store.engine.begin() as conn:
        conn.execute(text(
            "UPDATE sm_workflows SET state = 'Charged', data = '{\"order_id\": \"y\"}', "
            "status = 'ready', wake_at = CURRENT_TIMESTAMP, version = version + 1 "
            "WHERE id = :id"), {"id": forced})
    # Cancelled without --app: the CLI cannot tell whether the machine has a cancel route, so it
    # records the request and the worker carries it out.
    requested = sm("cancel", doomed, "--reason", "changed my mind", "--actor", "bob",
                   db=db_url).stdout
    assert "requested" in requested

    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "statemachine", "--db", db_url, "worker", "--app", APP,
             "--poll", "0.1", "--name", "cli-test-worker"],
            cwd=ROOT, env=_env(), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            done = wait_for(client, good, "done")
            parked = wait_for(client, forced, "failed")
            wait_for(client, doomed, "cancelled")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                raise
    assert code == 0, log.read_text()
    assert "running order" in log.read_text()

    assert done.state_name == "Confirmed"
    assert parked.state_name == "Charged"
    assert parked.last_error is not None
    assert "data.charge_id" in parked.last_error
    assert [(h.kind, h.cause) for h in client.history(doomed)] == [
        ("start", None), ("cancel", "changed my mind (by bob)")]

    (shown_good, history_good, history_forced, errors_forced, shown_forced,
     checked_forced) = sm_all(
        db_url, ("show", good, "--json"), ("history", good, "--json"),
        ("history", forced, "--json"), ("history", forced, "--errors"),
        ("show", forced, "--json"), ("show", forced, "--app", APP, "--json"))
    info = fields(shown_good.stdout)
    assert (info["state"], info["status"], info["version"]) == ("Confirmed", "done", 5)
    rows = history_rows(history_good.stdout)
    assert [(r["version"], r["kind"]) for r in rows] == [
        (1, "start"), (2, "failed_attempt"), (3, "transition"), (4, "transition"),
        (5, "transition")]
    assert [rows[-1][k] for k in ("from_state", "to_state", "status")] == [
        "Shipped", "Confirmed", "done"]
    assert [r["kind"] for r in history_rows(history_forced.stdout)] == [
        "start", "external_change", "parked"]
    parked_error = errors_forced.stdout.split("--- version")[1]
    assert "required field missing @ data.charge_id" in parked_error
    assert fields(shown_forced.stdout)["load_error"] is None  # no machine imported: not checked
    assert "required field missing @ data.charge_id" in fields(checked_forced.stdout)["load_error"]

    assert "is ready again" in sm("retry", forced, db=db_url).stdout
    assert (client.get(forced).status, client.history(forced)[-1].kind) == ("ready", "retry")

    refused, debug = sm_all(db_url, (("retry", good), 1), (("--debug", "retry", good), 1))
    assert_one_line_error(refused, f"cannot retry workflow {good}", "it is done")
    assert "Traceback" in debug.stderr
    assert "InvalidOperation" in debug.stderr


def test_database_url_from_environment(db_url: str, client: Client, tmp_path: Path) -> None:
    env = _env(STATEMACHINE_DATABASE_URL=db_url)
    workflow_id = started(sm(*start_args(), db=None, cwd=tmp_path, env=env))
    assert workflow_id in listed(sm("list", "--json", db=None, cwd=tmp_path, env=env).stdout)
    assert client.get(workflow_id).state_name == "OrderPlaced"
    assert not (tmp_path / "statemachine.db").exists()  # the default was not used


# -- errors for people ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("db", "fragments"), [
    ("notaurl", ["--db notaurl", "not a database URL", "sqlite:///"]),
    ("mysql://app@localhost/app", ["does not run on 'mysql'", "postgresql"]),
    ("postgresql+psycopg2://app@localhost/app", ["driver 'psycopg2' is not installed",
                                                 "postgresql+psycopg://"]),
    ("sqlite://", ["needs a SQLite file"]),
    ("unreachable", ["cannot reach the database", "127.0.0.1", "Connection refused"]),
])
def test_database_url_errors_are_one_line(db: str, fragments: list[str]) -> None:
    if db == "unreachable":  # a port nobody listens on
        db = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/postgres"
    for args in (("list",), ("migrate",)):
        assert_one_line_error(sm(*args, db=db, expect=1), *fragments)


def test_debug_shows_the_traceback() -> None:
    result = sm("--debug", "list", db="notaurl", expect=1)
    assert "Traceback" in result.stderr
    assert "InvalidArgument" in result.stderr


def test_a_missing_postgresql_database_is_told_to_create_it(pg_database: URL) -> None:
    name = f"sm_missing_{uuid.uuid4().hex[:8]}"
    db = pg_database.set(database=name).render_as_string(hide_password=False)
    result = sm("list", db=db, expect=1)
    assert_one_line_error(result, f"database '{name}' does not exist", f"createdb {name}")
    assert "migrate" not in result.stderr  # migrating cannot create a database


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    db = "sqlite:///nowhere.db"  # relative: looked for in the command's directory
    for args in (("list",), ("show", str(uuid.uuid4())), ("history", str(uuid.uuid4())),
                 ("events", "1e0f"), ("stats",), ("retry", "--status", "failed", "--yes"),
                 ("check", "--app", APP), ("start", "order", "--data", ORDER, "--app", APP),
                 ("worker", "--app", APP)):
        result = sm(*args, db=db, expect=1, cwd=tmp_path)
        assert_one_line_error(result, str(path), "does not exist", "statemachine --db")
    assert not path.exists()
    # The hint names the file by its absolute path: run from anywhere, it creates that file,
    # not a second database in the current directory.
    hint = re.search(r"`statemachine (--db \S+ migrate)`", result.stderr)
    assert hint is not None, result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "applied 0001" in sm(*hint.group(1).split(), db=None, cwd=elsewhere).stdout
    assert path.exists()
    assert list(elsewhere.iterdir()) == []


def test_an_unmigrated_database_is_told_to_migrate(backend: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        (tmp_path / "empty.db").touch()
        db = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        database = request.getfixturevalue("pg_database")
        url, schema = backend_schema_url(database, backend)
        request.addfinalizer(lambda: _drop_schema(database, schema))
        db = url.render_as_string(hide_password=False)
    for args in (("list",), ("show", str(uuid.uuid4())), ("start", *start_args()[1:])):
        assert_one_line_error(sm(*args, db=db, expect=1), "no statemachine tables",
                              "run `statemachine migrate`")


# -- the two bugs of issue 8 ---------------------------------------------------------------------


def test_start_stores_the_state_name_not_the_class_name(db_url: str, client: Client) -> None:
    workflow_id = started(sm("start", "proc_renamed", "--data", '{"n": 4}',
                             "--app", "tests.machines_for_tests:Renamed", db=db_url))
    info = client.get(workflow_id)
    assert (info.state_name, info.data) == ("Original", {"n": 4})


def test_demo_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    """Built and installed as a user would, run from a directory with no `machines/` in reach."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("statemachine-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    # The dependencies come from this environment's site-packages, linked one by one into a
    # plain directory (no .pth file, so not this checkout's editable install), leaving out the
    # optional CockroachDB dialect: the wheel is installed without the extra.
    deps = tmp_path / "deps"
    deps.mkdir()
    for site in (p for p in sys.path if p.endswith("site-packages")):
        for entry in Path(site).iterdir():
            if entry.suffix == ".pth" or entry.name.startswith(
                    ("statemachine", "_editable", "sqlalchemy_cockroachdb", "__pycache__")):
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "STATEMACHINE_DATABASE_URL", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(deps)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import statemachine; print(statemachine.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel, not this checkout
    demo = subprocess.run([str(venv / "bin" / "statemachine"), "--db", "sqlite:///demo.db",
                           "demo"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert demo.returncode == 0, demo.stderr
    assert "OrderPlaced -> Charged" in demo.stdout
    final = demo.stdout.split("final states:")[1]
    assert "Confirmed" in final
    assert "PaymentFailed" in final

    no_extra = subprocess.run([str(venv / "bin" / "statemachine"), "--db",
                               "cockroachdb://root@localhost:26257/defaultdb", "list"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
                              check=False)
    assert no_extra.returncode == 1
    assert_one_line_error(no_extra, "CockroachDB dialect is not installed",
                          "pip install 'statemachine[cockroachdb]'")
