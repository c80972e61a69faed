"""Real HTTP services for the checkout tests, and the harness that runs workers against them.

Each service is a small JSON-over-HTTP server on 127.0.0.1 (a random free port), served by a
`ThreadingHTTPServer` in a thread of the pytest process. Its state lives in that process, so worker
processes that are SIGKILLed and restarted keep talking to the same service state, and the test
reads that state directly (charge counts, refund counts, tokens issued...).

- `PaymentService`: charges deduplicated by ``Idempotency-Key`` (same key, same charge, charged
  once; a declined card gives 402 and a failed charge), a lookup of charges by key (what a
  reconcile handler asks), refunds (one per charge, deduplicated by key).
- `StockService`: availability, reservations (409 when short), releases; the test changes stock.
- `SubscriptionService`: short-lived JWT-like tokens (expiry inside the token, HMAC-signed) and an
  extension endpoint that rejects expired tokens (401) and can fail permanently (422).
- `NotificationService`: the clock scenario: schedules a reminder "in N seconds" and records when
  each request arrived by its own clock, so a test can check a delay a handler computed.

Every service can fail on demand: `fail_next(n, route, status)` answers the next `n` matching
requests with `status` (503 by default) before doing anything, or after doing it
(``after_effect=True``: the effect happened, the response says it did not).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from machines.checkout import metadata as checkout_tables
from machines.fakes.server import FakeService, Reply, Request, error
from tests.procs import ProcessGroup
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent

Response = tuple[int, dict[str, Any]]


class Service(FakeService):
    """A checkout fake: the shared fake server (`machines.fakes.server.FakeService`: requests
    kept, faults injected), answering in one `handle` method, with a clock a test can move
    forward (`jump`)."""

    def __init__(self) -> None:
        super().__init__()
        self.skew = 0.0  # seconds the service's clock runs ahead of the machine's (`jump`)

    def now(self) -> float:
        """The service's clock: the machine's (``time.time()``) plus whatever `jump` added."""
        with self.lock:
            return time.time() + self.skew

    def jump(self, seconds: float) -> None:
        """Move the service's clock forward (tokens expire, say) without waiting for it."""
        with self.lock:
            self.skew += seconds

    def handle(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dispatch(self, request: Request) -> Reply:
        return self.handle(request)



class PaymentService(Service):
    """Charges and refunds, deduplicated by ``Idempotency-Key`` like Stripe's API."""

    name = "payments"
    DECLINED_CARD = "tok_chargeDeclined"

    def __init__(self) -> None:
        super().__init__()
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self._replies: dict[tuple[str, str], Response] = {}  # (route, key) -> first answer
        self._ids = itertools.count(1)

    def handle(self, request: Request) -> Response:
        if request.route == "GET /charges":  # ?idempotency_key=...
            keys = request.query.get("idempotency_key", [])
            return 200, {"data": [c for c in self.charges.values()
                                  if c["idempotency_key"] in keys]}
        if request.route not in ("POST /charges", "POST /refunds"):
            return error(404, "not_found")
        key = request.idempotency_key
        if not key:
            return error(400, "idempotency_key_required")
        replay = self._replies.get((request.route, key))
        if replay is not None:  # same key: the first answer again, nothing done twice
            return replay
        reply = (self._charge if request.route == "POST /charges" else self._refund)(request, key)
        self._replies[(request.route, key)] = reply
        return reply

    def _charge(self, request: Request, key: str) -> Response:
        body = request.body
        declined = body.get("source") == self.DECLINED_CARD
        charge = {"id": f"ch_{next(self._ids):04d}", "order_id": body["order_id"],
                  "amount": body["amount"], "idempotency_key": key,
                  "status": "failed" if declined else "succeeded", "refunded": False}
        self.charges[charge["id"]] = charge
        if declined:
            return error(402, "card_declined", charge=charge["id"])
        return 200, charge

    def _refund(self, request: Request, key: str) -> Response:
        charge = self.charges.get(request.body.get("charge", ""))
        if charge is None or charge["status"] != "succeeded":
            return error(404, "no_such_charge")
        if charge["refunded"]:
            return error(400, "charge_already_refunded")
        charge["refunded"] = True
        refund = {"id": f"re_{next(self._ids):04d}", "charge": charge["id"],
                  "amount": charge["amount"], "idempotency_key": key}
        self.refunds[refund["id"]] = refund
        return 200, refund

    # -- what the tests read -----------------------------------------------------------------

    def succeeded(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """Charges that took money (for `order_id`, or all)."""
        with self.lock:
            return [c for c in self.charges.values() if c["status"] == "succeeded"
                    and order_id in (None, c["order_id"])]

    @property
    def charge_count(self) -> int:
        return len(self.succeeded())

    @property
    def refund_count(self) -> int:
        with self.lock:
            return len(self.refunds)


class StockService(Service):
    """Stock levels, reservations and releases. The test sets stock with `set_stock`."""

    name = "stock"

    def __init__(self) -> None:
        super().__init__()
        self.stock: dict[str, int] = {}
        self.reservations: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, Response] = {}
        self._ids = itertools.count(1)

    def set_stock(self, sku: str, quantity: int) -> None:
        with self.lock:
            self.stock[sku] = quantity

    def available(self, sku: str) -> int:
        with self.lock:
            return self.stock.get(sku, 0)

    @property
    def reservation_count(self) -> int:
        with self.lock:
            return len(self.reservations)

    @property
    def released_count(self) -> int:
        with self.lock:
            return sum(1 for r in self.reservations.values() if r["released"])

    def handle(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        if request.route == "GET /stock":  # ?sku=a&sku=b
            return 200, {"available": {s: self.stock.get(s, 0)
                                       for s in request.query.get("sku", [])}}
        if request.route == "POST /reservations":
            key = request.idempotency_key or secrets.token_hex(8)
            if key not in self._by_key:
                self._by_key[key] = self._reserve(request.body)
            return self._by_key[key]
        if request.method == "POST" and len(parts) == 3 and parts[0] == "reservations" \
                and parts[2] == "release":
            reservation = self.reservations.get(parts[1])
            if reservation is None:
                return error(404, "no_such_reservation")
            if not reservation["released"]:  # releasing twice gives nothing back twice
                reservation["released"] = True
                for sku, quantity in reservation["items"].items():
                    self.stock[sku] = self.stock.get(sku, 0) + quantity
            return 200, reservation
        return error(404, "not_found")

    def _reserve(self, body: dict[str, Any]) -> Response:
        items: dict[str, int] = body["items"]
        missing = {s: q - self.stock.get(s, 0) for s, q in items.items()
                   if self.stock.get(s, 0) < q}
        if missing:
            return error(409, "out_of_stock", missing=missing)
        for sku, quantity in items.items():
            self.stock[sku] -= quantity
        reservation = {"id": f"rsv_{next(self._ids):04d}", "order_id": body["order_id"],
                       "items": items, "released": False}
        self.reservations[reservation["id"]] = reservation
        return 201, reservation


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SubscriptionService(Service):
    """Subscriptions behind short-lived bearer tokens.

    ``POST /oauth/token`` issues a JWT-like token (``header.payload.signature``, HS256, ``exp`` in
    the payload) that lives `token_lifetime` seconds; ``POST /subscriptions/{customer}/extend``
    answers 401 to a missing, forged or expired token, 422 for a customer in `closed` (a permanent
    failure), and otherwise extends the subscription (deduplicated by ``Idempotency-Key``)."""

    name = "subscriptions"

    def __init__(self, token_lifetime: float = 60.0) -> None:
        super().__init__()
        self.token_lifetime = token_lifetime
        self.closed: set[str] = set()
        self.tokens: list[dict[str, Any]] = []  # payloads of the tokens issued, in order
        self.accepted: list[dict[str, Any]] = []  # token payloads of the extensions done
        self.rejected: list[str] = []  # why a token was refused, per refusal
        self.paid_months: dict[str, int] = {}
        self._by_key: dict[str, Response] = {}
        self._secret = secrets.token_bytes(32)

    def handle(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        if request.route == "POST /oauth/token":
            return 200, self._issue(request.body.get("client_id", "anonymous"))
        if request.method == "POST" and len(parts) == 3 and parts[0] == "subscriptions" \
                and parts[2] == "extend":
            claims, why = self._verify(request.headers.get("authorization", ""))
            if claims is None:
                self.rejected.append(why)
                return error(401, why)
            key = request.idempotency_key or secrets.token_hex(8)
            if key not in self._by_key:
                self._by_key[key] = self._extend(parts[1], request.body, claims)
            return self._by_key[key]
        return error(404, "not_found")

    def _issue(self, client_id: str) -> dict[str, Any]:
        now = self.now()
        claims = {"sub": client_id, "jti": len(self.tokens) + 1, "iat": now,
                  "exp": now + self.token_lifetime}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        sig = _b64(hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        self.tokens.append({**claims, "token": f"{head}.{body}.{sig}"})
        return {"access_token": f"{head}.{body}.{sig}", "token_type": "bearer",
                "expires_in": self.token_lifetime}

    def _verify(self, authorization: str) -> tuple[dict[str, Any] | None, str]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return None, "token_missing"
        head, body, sig = token.split(".")
        expected = _b64(hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, expected):
            return None, "token_invalid"
        claims: dict[str, Any] = json.loads(_unb64(body))
        if self.now() >= claims["exp"]:
            return None, "token_expired"
        return claims, ""

    def _extend(self, customer: str, body: dict[str, Any], claims: dict[str, Any]) -> Response:
        if customer in self.closed:
            return error(422, "subscription_closed", customer=customer)
        self.paid_months[customer] = self.paid_months.get(customer, 0) + int(body["months"])
        self.accepted.append(claims)
        return 200, {"customer": customer, "order_id": body["order_id"],
                     "paid_months": self.paid_months[customer]}


class NotificationService(Service):
    """Reminders "in N seconds": records, by its own clock, when each request arrived."""

    name = "notifications"

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[dict[str, Any]] = []  # {order_id, in_seconds, received_at, fires_at}
        self.sent: list[dict[str, Any]] = []  # {order_id, received_at}

    def handle(self, request: Request) -> Response:
        if request.route == "POST /reminders":
            entry = {"order_id": request.body["order_id"],
                     "in_seconds": float(request.body["in_seconds"]),
                     "received_at": request.received_at}
            entry["fires_at"] = entry["received_at"] + entry["in_seconds"]
            self.scheduled.append(entry)
            return 200, entry
        if request.route == "POST /reminders/send":
            entry = {"order_id": request.body["order_id"], "received_at": request.received_at}
            self.sent.append(entry)
            return 200, entry
        return error(404, "not_found")


@dataclass
class Shop:
    """The services a checkout talks to, running in this process."""

    payments: PaymentService = field(default_factory=PaymentService)
    stock: StockService = field(default_factory=StockService)
    subscriptions: SubscriptionService = field(default_factory=SubscriptionService)
    notifications: NotificationService = field(default_factory=NotificationService)

    def all(self) -> list[Service]:
        return [self.payments, self.stock, self.subscriptions, self.notifications]

    def env(self) -> dict[str, str]:
        """What `machines.checkout:from_env` (and tests.checkout_apps) read."""
        return {"CHECKOUT_PAYMENTS_URL": self.payments.url,
                "CHECKOUT_STOCK_URL": self.stock.url,
                "CHECKOUT_SUBSCRIPTIONS_URL": self.subscriptions.url,
                "CHECKOUT_NOTIFICATIONS_URL": self.notifications.url}


@pytest.fixture(name="db")
def operator_db_fixture(db_url: str) -> Iterator[Engine]:
    """An operator's engine on the test database, with the app's `orders` table created."""
    level = "AUTOCOMMIT" if db_url.startswith("sqlite") else "READ COMMITTED"
    engine = create_engine(db_url, isolation_level=level)
    checkout_tables.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(name="shop")
def shop_fixture() -> Iterator[Shop]:
    """The four services, started for one test and stopped after it."""
    shop = Shop()
    for service in shop.all():
        service.start()
    try:
        yield shop
    finally:
        for service in shop.all():
            service.stop()


# -- worker processes ----------------------------------------------------------------------------


class Workers(ProcessGroup):
    """Spawns ``statemachine worker --app tests.checkout_apps:APP`` processes that talk to `shop`.

    ``pause="after POST /charges"`` (or ``before ...``, or ``sql INSERT INTO orders``) makes the
    worker stop at that point of a handler, write ``marks/paused`` and wait: the test then kills
    it (or lets it go on with `resume`). On exit, kills what still runs and, when the block failed,
    prints every worker's output."""

    def __init__(self, db_url: str, tmp_path: Path, shop: Shop) -> None:
        self.db_url = db_url
        self.shop = shop
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        self.log_dir = tmp_path / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, pause: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("STATEMACHINE_DATABASE_URL", None)
        env.pop("CHECKOUT_PAUSE", None)
        env.update(self.shop.env())
        env["CHECKOUT_MARKS"] = str(self.marks)
        if pause is not None:
            env["CHECKOUT_PAUSE"] = pause
        return env

    def spawn(self, name: str, app: str, *, pause: str | None = None, lease: float = 1.0,
              poll: float = 0.05, concurrency: int = 4) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "statemachine", "--db", self.db_url, "worker",
               "--app", f"tests.checkout_apps:{app}", "--name", name, "--lease", str(lease),
               "--poll", str(poll), "--grace", "1", "--concurrency", str(concurrency)]
        with open(self.log_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(pause), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``statemachine --db URL ARGS`` as an operator would; fails on a non-zero exit."""
        done = subprocess.run([sys.executable, "-m", "statemachine", "--db", self.db_url, *args],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"statemachine {' '.join(args)}: {done.stderr}"
        return done

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        """Wait until worker `name` has loaded its machines and is about to claim."""
        proc = self.procs[name]

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode} at start:\n"
                                     f"{self.log(name)}")
            return f"worker {name} running" in self.log(name)

        wait_until(ready, f"worker {name} to start", timeout)

    def wait_paused(self, name: str, timeout: float = 30.0) -> str:
        """Wait until worker `name` stopped at its pause point; returns where it stopped."""
        proc = self.procs[name]
        path = self.marks / "paused"

        def paused() -> str:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n"
                                     f"{self.log(name)}")
            if not path.exists():
                return ""
            pid, _, where = path.read_text().partition(" ")
            assert int(pid) == proc.pid, f"paused in pid {pid}, not in worker {name}"
            return where

        return wait_until(paused, f"worker {name} to pause", timeout)

    def resume(self) -> None:
        """Let a paused worker go on."""
        (self.marks / "resume").touch()

    def freeze(self, name: str) -> None:
        """SIGSTOP worker `name` (a VM pause, a long GC), at a moment when it holds no database
        lock: a worker frozen inside a statement would block the others, which is not the
        situation under test."""
        proc = self.procs[name]
        for _ in range(100):
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)  # let a statement it had sent finish on the server
            if not self._database_busy():
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"could not freeze worker {name} outside a transaction")

    def _database_busy(self) -> bool:
        url = make_url(self.db_url)
        if url.get_backend_name() == "sqlite":
            lite = sqlite3.connect(str(url.database), timeout=0.05, isolation_level=None)
            try:
                lite.execute("BEGIN IMMEDIATE")
                lite.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                lite.close()
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return bool(conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() "
                    "AND state IN ('active', 'idle in transaction')")).scalar_one())
        finally:
            engine.dispose()

    def kill(self, name: str) -> None:
        """SIGKILL worker `name` and wait for it to be gone."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

