"""Operating with the CLI, as an operator (or a script) does, through the real command on every
backend: `list` filters and paging, id prefixes, `show`/`history`/`events`/`stats` as JSON, and
the bulk rails of `retry`/`cancel`/`force`/`resolve` over thousands of rows while a worker runs,
interrupted with a real SIGINT and run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text, update
from sqlalchemy.exc import OperationalError

from statemachine import Client, Machine
from statemachine._schema import workflows
from tests.acceptance.test_cli import APP, ROOT, _env, assert_one_line_error, sm, sm_all
from tests.machines_for_tests import P1, Bulk
from tests.waits import wait_until

BULK_APP = "tests.machines_for_tests:Bulk"


def both_machines() -> list[type[Machine] | Machine]:
    """A factory naming two machines (for ``--app module:factory``)."""
    from machines.order import Order

    return [Bulk, Order()]


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    """A client of the test's database that knows both machines (closed at the end)."""
    from machines.order import Order

    with Client(db_url, [Bulk, Order]) as c:
        yield c


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def _park(client: Client, ids: list[uuid.UUID], error: str) -> None:
    """Park workflows by SQL, as a failing handler would have (status failed, no wake-up)."""
    for n in range(0, len(ids), 500):
        with client.store.engine.begin() as conn:
            conn.execute(update(workflows).where(workflows.c.id.in_(ids[n:n + 500]))
                         .values(status="failed", wake_at=None, last_error=error))


def test_list_filters_paging_prefixes_and_inspection(db_url: str, client: Client) -> None:
    ids = client.start_many(Bulk, [P1(n=n) for n in range(12)])
    keyed = client.start(Bulk, P1(n=99), key="k-1")
    parked, declined, running = ids[:3], ids[3:5], ids[5]
    _park(client, parked, "attempt 3: GatewayUnavailable: 503")
    _park(client, declined, "attempt 1: CardDeclined: card ending 0000")
    with client.store.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.id == running).values(
            status="running", lease_owner="w-gone",
            wake_at=client.store.current_time().replace(year=2020)))
    # An event that no state will consume: its workflow finished after it was sent.
    finished = ids[6]
    client.store.sql.insert_event(finished, "Nudge", {"why": "late"})
    with client.store.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.id == finished).values(
            status="done", wake_at=None))

    children = ids[7:9]
    with client.store.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.id.in_(children)).values(
            parent_id=keyed))

    (failed, errors, by_key, page1, unknown_machine, unknown_state, stats, events,
     prefix_show, history, by_parent, parent_show, finished_show) = sm_all(
        db_url, ("list", "--status", "failed", "--status", "cancelled", "--machine",
                 "proc_bulk", "--json"),
        ("list", "--error", "gatewayunavailable", "--json"),
        ("list", "--key", "k-1", "--json"), ("list", "--limit", "5", "--json"),
        (("list", "--machine", "nope"), 1), (("list", "--state", "Nope"), 1),
        ("stats", "--json"), ("events", str(finished)[:13], "--json"),
        ("show", str(parked[0])[:8], "--json"), ("history", str(keyed)[:8], "--json"),
        ("list", "--parent", str(keyed)[:8], "--json"), ("show", str(keyed), "--json"),
        ("show", str(finished), "--json"))
    assert {w["id"] for w in _json(failed)["workflows"]} == {str(i) for i in parked + declined}
    assert {w["id"] for w in _json(errors)["workflows"]} == {str(i) for i in parked}
    assert [w["id"] for w in _json(by_key)["workflows"]] == [str(keyed)]
    first = _json(page1)
    assert (first["shown"], first["total"]) == (5, 13)
    rest = _json(sm("list", "--limit", "100", "--after", first["next_cursor"], "--json",
                    db=db_url))
    assert rest["next_cursor"] is None
    seen = [w["id"] for w in first["workflows"] + rest["workflows"]]
    assert sorted(seen) == sorted(str(i) for i in [*ids, keyed])  # every row once
    assert_one_line_error(unknown_machine, "--machine nope", "known: proc_bulk")
    assert_one_line_error(unknown_state, "--state Nope", "P1")

    figures = _json(stats)
    assert figures["by_status"] == {"ready": 6, "failed": 5, "running": 1, "done": 1}
    assert {(s["kind"], s["count"], s["example"]) for s in figures["stuck"]} >= {
        ("running with an expired lease", 1, str(running))}
    assert figures["orphaned_events"] == {"count": 1, "example_workflow": str(finished)}
    (event,) = _json(events)["events"]
    assert (event["type"], event["status"], event["data"]) == ("Nudge", "pending",
                                                               {"why": "late"})
    shown = _json(prefix_show)
    assert (shown["id"], shown["status"], shown["last_error"]) == (
        str(parked[0]), "failed", "attempt 3: GatewayUnavailable: 503")
    assert shown["idempotency_key"] == f"{parked[0]}:1"
    assert {w["id"] for w in _json(by_parent)["workflows"]} == {str(c) for c in children}
    assert {c["id"] for c in _json(parent_show)["children"]} == {str(c) for c in children}
    assert [e["type"] for e in _json(finished_show)["pending_events"]] == ["Nudge"]
    (start,) = _json(history)["history"]
    assert (start["kind"], start["cause"], start["changes"]) == ("start", "key=k-1", [])

    # A prefix that several ids share is refused, naming them.
    by_digit: dict[str, list[str]] = {}
    for wid in [*ids, keyed]:
        by_digit.setdefault(str(wid)[0], []).append(str(wid))
    digit, shared = max(by_digit.items(), key=lambda kv: len(kv[1]))
    if len(shared) > 1:
        ambiguous = sm("show", digit, db=db_url, expect=1)
        assert_one_line_error(ambiguous, "ambiguous", shared[0])


def test_bulk_retry_thousands_while_a_worker_runs_interrupted_and_rerun(
    db_url: str, client: Client
) -> None:
    from machines.order import Order, OrderPlaced

    targets = client.start_many(Bulk, [P1(n=n) for n in range(2000)])
    others = client.start_many(Bulk, [P1(n=n) for n in range(50)])
    _park(client, targets, "attempt 3: GatewayUnavailable: 503")
    _park(client, others, "attempt 3: something else")
    order = client.start(Order, OrderPlaced(order_id="o", amount_cents=5))

    retry = ("retry", "--status", "failed", "--error", "GatewayUnavailable",
             "--reason", "gateway is back", "--actor", "ops")
    dry, refused = sm_all(db_url, (*retry, "--dry-run", "--json"), ((*retry,), 1))
    assert _json(dry)["matched"] == 2000
    assert_one_line_error(refused, "refusing to retry 2000 workflows", "--yes")
    assert client.store.sql.count_by_status()["failed"] == 2050  # neither changed anything

    # Two --app, one a factory of two machines: both machines' workflows run.
    worker = subprocess.Popen(
        [sys.executable, "-m", "statemachine", "--db", db_url, "worker", "--app", BULK_APP,
         "--app", "tests.acceptance.test_cli_operating:both_machines", "--poll", "0.2"],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    bulk: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: client.get(order).status == "done" or worker.poll() is not None,
                   "the order workflow is done")
        assert worker.poll() is None, worker.communicate()[1]
        bulk = subprocess.Popen(
            [sys.executable, "-m", "statemachine", "--db", db_url, *retry, "--yes",
             "--batch", "20"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Interrupted while under way, never after it ended: it is stopped (SIGSTOP) while it
        # is counted, and goes on only if it has not done 100 yet. (It ended between a count
        # and the SIGINT once, on a loaded machine: exit -2, nothing to test.) The count reads
        # through a plain engine: the stopped command may hold SQLite's write lock. (At
        # SERIALIZABLE even a read may be refused with 40001: it is asked again.)
        reader = create_engine(db_url)

        def stopped_under_way(bulk: subprocess.Popen[str] = bulk) -> bool:
            bulk.send_signal(signal.SIGSTOP)
            try:
                with reader.connect() as conn:
                    if bulk.poll() is not None or _retries(conn) >= 100:
                        return True
            except OperationalError:
                pass
            bulk.send_signal(signal.SIGCONT)
            return False

        try:
            wait_until(stopped_under_way, "the bulk retry is under way")
        finally:
            reader.dispose()
        bulk.send_signal(signal.SIGINT)
        bulk.send_signal(signal.SIGCONT)
        _, err = bulk.communicate(timeout=240)
        assert bulk.returncode == 130, err
        assert "interrupted" in err
        first = _retried(client)
        assert 0 < first < 2000
        rerun = _json(sm(*retry, "--yes", "--json", db=db_url))
        assert rerun["done"] == 2000 - first
        again = _json(sm(*retry, "--yes", "--json", db=db_url))
        assert (again["matched"], again["done"]) == (0, 0)
    finally:
        if bulk is not None and bulk.poll() is None:  # the test failed half way: no leftovers
            bulk.kill()
            bulk.send_signal(signal.SIGCONT)
            bulk.communicate(timeout=60)
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    # Each target retried exactly once, by ops, with the reason, in its state; nothing outside
    # the filter touched.
    counts = dict(client.store.transaction(lambda conn: conn.execute(text(
        "SELECT workflow_id, count(*) FROM sm_history WHERE kind = 'retry' "
        "GROUP BY workflow_id")).all()))
    causes = set(client.store.transaction(lambda conn: conn.execute(text(
        "SELECT DISTINCT cause || ' / ' || worker FROM sm_history WHERE kind = 'retry'"))
        .scalars().all()))
    assert {str(k) for k in counts} == {str(t) for t in targets}
    assert set(counts.values()) == {1}
    assert causes == {"gateway is back / ops"}
    assert {client.get(o).status for o in others} == {"failed"}


def _retries(conn: Connection) -> int:
    return int(conn.execute(text(
        "SELECT count(*) FROM sm_history WHERE kind = 'retry'")).scalar_one())


def _retried(client: Client) -> int:
    return client.store.transaction(_retries)


def test_bulk_cancel_force_resolve_with_rails(db_url: str, client: Client) -> None:
    ids = [client.start(Bulk, P1(n=n), key=f"k{n}") for n in range(6)]
    _park(client, ids[4:], "boom")
    keys = ("--key", "k0", "--key", "k1")
    cancel, force_dry = sm_all(
        db_url, ("cancel", *keys, "--app", BULK_APP, "--yes", "--actor", "ann", "--reason",
                 "duplicate orders", "--json"),
        ("force", "P3", "--data", '{"n": 7}', "--machine", "proc_bulk", "--key", "k2",
         "--key", "k3", "--app", BULK_APP, "--dry-run", "--json"))
    assert (_json(cancel)["matched"], _json(cancel)["done"]) == (2, 2)
    assert [client.get(i).status for i in ids[:2]] == ["cancelled", "cancelled"]
    assert client.history(ids[0])[-1].cause == "duplicate orders (by ann)"
    assert _json(force_dry)["matched"] == 2
    assert client.get(ids[2]).state_name == "P1"  # a dry run changes nothing
    force = ("force", "P3", "--data", '{"n": 7}', "--machine", "proc_bulk", "--key", "k2",
             "--key", "k3", "--app", BULK_APP, "--yes", "--actor", "bo", "--json")
    assert _json(sm(*force, db=db_url))["done"] == 2
    assert _json(sm(*force, db=db_url))["matched"] == 0  # already there: not forced twice
    forced = client.history(ids[2])[-1]
    assert (forced.kind, forced.to_state, forced.worker, forced.data) == (
        "forced", "P3", "bo", {"n": 7})
    entered = {i: client.store.sql.get(i).entered_version for i in ids[4:]}
    resolved = _json(sm("resolve", "--retry", "--status", "failed", "--yes", "--json",
                        "--actor", "cy", db=db_url))
    assert resolved["done"] == 2
    assert {(client.history(i)[-1].kind, client.history(i)[-1].worker) for i in ids[4:]} == {
        ("retry", "cy")}
    # Same transition, same idempotency key (it derives from entered_version).
    assert {i: client.store.sql.get(i).entered_version for i in ids[4:]} == entered
    both = sm("retry", str(ids[0]), "--status", "failed", db=db_url, expect=2)
    assert "not both" in both.stderr
    wrong = sm("retry", "--status", "ready", "--yes", db=db_url, expect=1)
    assert_one_line_error(wrong, "applies only to failed")
    graph = sm("graph", "--app", BULK_APP, "--app", APP, db=None).stdout
    assert graph.count("```mermaid") == 2


def test_start_migrate_and_check_speak_json(db_url: str) -> None:
    start, migrate, unknown = sm_all(
        db_url, ("start", "proc_bulk", "--data", '{"n": 1}', "--app", BULK_APP, "--json"),
        ("migrate", "--json"), (("start", "nope", "--app", BULK_APP), 1))
    started = _json(start)
    assert (started["machine"], started["key"]) == ("proc_bulk", None)
    assert uuid.UUID(started["id"])
    assert _json(migrate) == {"applied": []}
    assert_one_line_error(unknown, "unknown machine 'nope'", "defines proc_bulk")
    report = _json(sm("check", "--app", BULK_APP, "--json", db=db_url))
    assert (report["checked"], report["problems"], report["unfit"]) == (1, [], [])


def test_version_and_shell_completion() -> None:
    version, completion, script = (
        sm("--version", db=None),
        sm(db=None, env=_env(_STATEMACHINE_COMPLETE="bash_complete",
                             COMP_WORDS="statemachine retry --dr", COMP_CWORD="2")),
        sm(db=None, env=_env(_STATEMACHINE_COMPLETE="bash_source")))
    assert version.stdout.startswith("statemachine ")
    assert "--dry-run" in completion.stdout
    assert "_statemachine_completion" in script.stdout
