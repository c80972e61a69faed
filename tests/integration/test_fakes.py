"""The shared base of the fake services (`machines.fakes.server`): real sockets, routes, faults."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from machines.fakes.server import FakeService, Reply, Request, error, route
from tests.procs import ROOT


class Counter(FakeService):
    name = "counter"
    env_var = "COUNTER_URL"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done: dict[str, int] = {}

    @route("POST /items")
    def add(self, request: Request) -> Reply:
        key = request.idempotency_key or "none"
        self.done[key] = self.done.get(key, 0) + 1
        return 201, {"key": key, "times": self.done[key]}

    @route("GET /items/{item_id}")
    def get(self, request: Request, item_id: str) -> Reply:
        if item_id == "missing":
            return error(404, "no_such_item", item=item_id)
        return 200, {"id": item_id, "q": request.arg("q")}

    def snapshot(self) -> dict[str, Any]:
        return {"done": self.done}


FAKE = Counter


@pytest.fixture(name="fake")
def fake_fixture() -> Iterator[Counter]:
    with Counter() as fake:
        yield fake


@pytest.fixture(name="http")
def http_fixture() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as client:
        yield client


def test_routes_with_parameters_queries_and_errors(fake: Counter, http: httpx.Client) -> None:
    assert http.get(f"{fake.url}/items/a7", params={"q": "x"}).json() == {"id": "a7", "q": "x"}
    missing = http.get(f"{fake.url}/items/missing")
    assert (missing.status_code, missing.json()) == (404, {"error": "no_such_item",
                                                            "item": "missing"})
    assert http.delete(f"{fake.url}/items/a7").status_code == 405
    assert http.get(f"{fake.url}/nowhere").status_code == 404
    assert [r.route for r in fake.received("GET *")] == ["GET /items/a7", "GET /items/missing",
                                                          "GET /nowhere"]


def test_a_fault_before_the_effect_does_nothing(fake: Counter, http: httpx.Client) -> None:
    fake.fail_next(2, "POST /items", status=503)
    for _ in range(2):
        assert http.post(f"{fake.url}/items", headers={"Idempotency-Key": "k"}).status_code == 503
    assert fake.done == {}
    assert http.post(f"{fake.url}/items", headers={"Idempotency-Key": "k"}).status_code == 201
    assert fake.done == {"k": 1}


def test_a_fault_after_the_effect_did_it(fake: Counter, http: httpx.Client) -> None:
    fake.fail_next(1, "POST /items", status=500, after_effect=True)
    assert http.post(f"{fake.url}/items", headers={"Idempotency-Key": "k"}).status_code == 500
    assert fake.done == {"k": 1}


def test_429_with_retry_after_and_a_custom_body(fake: Counter, http: httpx.Client) -> None:
    fake.fail_next(1, "GET /items/*", status=429, headers={"Retry-After": "7"},
                   body={"success": False})
    answer = http.get(f"{fake.url}/items/a")
    assert (answer.status_code, answer.headers["retry-after"], answer.json()) == (
        429, "7", {"success": False})


def test_a_slow_answer_times_the_client_out_after_the_effect(fake: Counter) -> None:
    fake.fail_next(1, "POST /items", status=None, delay=1.0)
    with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{fake.url}/items", headers={"Idempotency-Key": "slow"})
    assert fake.done == {"slow": 1}


def test_a_dropped_connection(fake: Counter, http: httpx.Client) -> None:
    fake.fail_next(1, "POST /items", drop=True, after_effect=True)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(f"{fake.url}/items", headers={"Idempotency-Key": "d"})
    assert fake.done == {"d": 1}
    assert fake.received("POST /items")[0].status == 0


def test_where_picks_the_requests_that_fail(fake: Counter, http: httpx.Client) -> None:
    fake.fail_next(1, "POST /items", where=lambda r: r.idempotency_key == "b")
    assert http.post(f"{fake.url}/items", headers={"Idempotency-Key": "a"}).status_code == 201
    assert http.post(f"{fake.url}/items", headers={"Idempotency-Key": "b"}).status_code == 503


def test_faults_and_state_over_http(fake: Counter, http: httpx.Client) -> None:
    bad = http.post(f"{fake.url}/_fake/faults", json={"n": 1, "colour": "red"})
    assert bad.status_code == 400
    assert bad.json()["fields"] == ["colour"]
    assert http.post(f"{fake.url}/_fake/faults",
                     json={"n": 1, "route": "POST /items", "status": 502}).status_code == 201
    assert http.post(f"{fake.url}/items").status_code == 502
    assert http.post(f"{fake.url}/items").status_code == 201
    state = http.get(f"{fake.url}/_fake/state").json()
    assert state == {"service": "counter", "requests": {"POST /items": 2},
                     "done": {"none": 1}}


def test_bad_routes_are_refused_when_declared() -> None:
    with pytest.raises(ValueError, match="expected 'METHOD /path'"):
        route("post items")


def test_the_command_line_serves_fakes_by_hand() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "machines.fakes",
                             "tests.integration.test_fakes:Counter"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("export COUNTER_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1].split()[0]
        assert httpx.get(f"{url}/items/x", timeout=5).json() == {"id": "x", "q": None}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_the_billing_fake_pages_by_cursor_and_charges_once_per_key(http: httpx.Client) -> None:
    from machines.fakes.billing import BillingService

    with BillingService() as bank:
        assert http.post(f"{bank.url}/customers", json={}).status_code == 400
        ids = [http.post(f"{bank.url}/customers", json={"email": f"{n}@x.org"}).json()["id"]
               for n in range(3)]
        page = http.get(f"{bank.url}/customers", params={"limit": 2}).json()
        assert ([c["id"] for c in page["data"]], page["has_more"]) == (ids[:2], True)
        rest = http.get(f"{bank.url}/customers",
                        params={"limit": 2, "starting_after": ids[1]}).json()
        assert ([c["id"] for c in rest["data"]], rest["has_more"]) == (ids[2:], False)
        bank.decline(ids[0], times=1)
        charge = {"customer": ids[0], "amount_cents": 100, "period": "2030-01"}
        first = http.post(f"{bank.url}/charges", json=charge, headers={"Idempotency-Key": "a"})
        again = http.post(f"{bank.url}/charges", json=charge, headers={"Idempotency-Key": "a"})
        assert (first.status_code, again.status_code) == (402, 402)  # the same answer
        assert http.post(f"{bank.url}/charges", json=charge,
                         headers={"Idempotency-Key": "b"}).status_code == 201
        assert [c["status"] for c in bank.charges.values()] == ["failed", "succeeded"]
        assert bank.charges_per_key == {"a": 1, "b": 1}
