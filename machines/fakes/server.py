"""The shared base of the fake outside services: a small real HTTP server on 127.0.0.1.

A fake is a subclass of `FakeService` whose methods are JSON routes::

    class MailService(FakeService):
        name = "mail"
        env_var = "DRIP_MAIL_URL"

        @route("POST /messages")
        def send(self, request: Request) -> Reply:
            return 202, {"id": "msg_1"}

        @route("GET /messages/{message_id}")
        def get(self, request: Request, message_id: str) -> Reply:
            return 200, {"id": message_id}

It listens on a real socket (a free port unless one is given), one thread per request, and answers
with real status codes. Every request is kept (`received`), so tests assert on what was called;
handlers run under the service's lock, so a subclass's counters need no locking of their own.

Faults are injected per route, from a test (`fail_next`, `latency`) or, when the fake runs by hand,
over HTTP (``POST /_fake/faults``, see `FakeService.control`):

- a status before the effect (``fail_next(2, "POST /charges", status=503)``): nothing was done;
- a status after the effect (``after_effect=True``): it was done, the client is told otherwise;
- a delay (``delay=5.0``) after the effect: the client times out on something that happened;
- a dropped connection (``drop=True``), before or after the effect;
- any headers and body (``status=429, headers={"Retry-After": "3"}``).

``python -m machines.fakes NAME...`` runs fakes by hand (see `machines.fakes.__main__`). This module
has no dependency outside the standard library.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeService", "Fault", "Reply", "Request", "error", "route"]

# A handler's answer: (status, JSON body) or (status, JSON body, extra headers).
Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]

_ROUTE_ATTR = "_fake_route"


def route(spec: str) -> Callable[[Callable[..., Reply]], Callable[..., Reply]]:
    """Declare a method as the handler of ``"METHOD /path/{param}"``; each ``{param}`` matches
    one path segment and is passed to the method as a keyword argument (a string)."""
    method, _, path = spec.partition(" ")
    if not method.isupper() or not path.startswith("/"):
        raise ValueError(f"route {spec!r}: expected 'METHOD /path', e.g. 'POST /charges'")

    def mark(handler: Callable[..., Reply]) -> Callable[..., Reply]:
        setattr(handler, _ROUTE_ATTR, (method, path))
        return handler

    return mark


def error(status: int, code: str, **fields: Any) -> Reply:
    """A JSON error reply ``{"error": code, ...fields}``."""
    return status, {"error": code, **fields}


@dataclass
class Request:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body ({} when there was none)
    received_at: float  # when it arrived, by the service's clock (`FakeService.now`)
    status: int = 0  # what was answered (0: nothing, the connection was dropped)

    @property
    def route(self) -> str:
        """``"METHOD /path"``, what `fail_next` and `received` match against."""
        return f"{self.method} {self.path}"

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` header, if sent."""
        return self.headers.get("idempotency-key")

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Fault:
    """What to do to the next `remaining` requests matching `route` (fnmatch on "METHOD /path")
    and `where`; see `FakeService.fail_next`."""

    route: str
    remaining: int
    status: int | None = 503  # None: answer normally (with `delay`)
    after_effect: bool = False
    delay: float = 0.0
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    where: Callable[[Request], bool] | None = None

    def matches(self, request: Request) -> bool:
        return self.remaining > 0 and fnmatch.fnmatchcase(request.route, self.route) and (
            self.where is None or self.where(request))


@dataclass
class _Answer:
    status: int
    body: Any
    headers: dict[str, str]
    delay: float = 0.0
    drop: bool = False


class FakeService:
    """A fake outside service: JSON routes declared with `route` on a subclass.

    `name` names it in logs and on the command line; `env_var` is the variable its machine reads
    for the base URL; `default_port` is where ``python -m machines.fakes`` serves it."""

    name: ClassVar[str] = "service"
    env_var: ClassVar[str] = ""
    default_port: ClassVar[int] = 0
    _routes: ClassVar[list[tuple[str, re.Pattern[str], str]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes = []
        for attr in dir(cls):
            spec = getattr(getattr(cls, attr), _ROUTE_ATTR, None)
            if spec is not None:
                method, path = spec
                pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
                routes.append((method, re.compile(f"^{pattern}$"), attr))
        cls._routes = routes

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.latency = 0.0  # seconds added to every answer
        self._faults: list[Fault] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                try:
                    service._serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (its timeout) before the answer: as a real API would,
                    # the request is recorded and its effect done; nothing to print.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: `requests` is the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"fake-{self.name}", daemon=True)

    # -- life cycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------------------

    def fail_next(self, n: int = 1, route: str = "*", *, status: int | None = 503,
                  after_effect: bool = False, delay: float = 0.0, drop: bool = False,
                  headers: dict[str, str] | None = None, body: Any = None,
                  where: Callable[[Request], bool] | None = None) -> None:
        """Misbehave on the next `n` requests matching `route` ("POST /charges", fnmatch) and
        `where`: answer `status` (with `headers` and `body`, default ``{"error": "injected"}``)
        instead of acting, or after acting when `after_effect`; wait `delay` seconds before
        answering; or `drop` the connection without an answer. ``status=None`` acts and answers
        normally (combine with `delay` for a slow answer)."""
        if n < 1:
            raise ValueError(f"fail_next: n must be at least 1, got {n}")
        with self.lock:
            self._faults.append(Fault(route, n, status, after_effect, delay, drop,
                                      dict(headers or {}), body, where))

    def clear_faults(self) -> None:
        """Forget every fault not yet used."""
        with self.lock:
            self._faults.clear()

    def received(self, route: str = "*") -> list[Request]:
        """The requests received so far whose "METHOD /path" matches `route` (fnmatch)."""
        with self.lock:
            return [r for r in self.requests if fnmatch.fnmatchcase(r.route, route)]

    def now(self) -> float:
        """The service's clock, stamped on each request (`Request.received_at`):
        ``time.time()``; a fake whose clock a test moves overrides it."""
        return time.time()

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` shows a person watching: override to add counters."""
        return {}

    # -- the control routes (for running by hand) --------------------------------------------

    def control(self, request: Request) -> Reply | None:
        """``GET /_fake/state``: `snapshot` and request counts per route;
        ``POST /_fake/faults`` with ``{"n", "route", "status", "after_effect", "delay", "drop",
        "headers"}``: `fail_next`; ``DELETE /_fake/faults``: `clear_faults`."""
        if not request.path.startswith("/_fake/"):
            return None
        if request.route == "GET /_fake/state":
            counts: dict[str, int] = {}
            for r in self.requests:
                if not r.path.startswith("/_fake/"):
                    counts[r.route] = counts.get(r.route, 0) + 1
            return 200, {"service": self.name, "requests": counts, **self.snapshot()}
        if request.route == "POST /_fake/faults":
            body = request.body if isinstance(request.body, dict) else {}
            allowed = {"n", "route", "status", "after_effect", "delay", "drop", "headers"}
            unknown = set(body) - allowed
            if unknown:
                return error(400, "unknown_fields", fields=sorted(unknown),
                             allowed=sorted(allowed))
            try:
                self.fail_next(**body)
            except (TypeError, ValueError) as e:
                return error(400, "bad_fault", detail=str(e))
            return 201, {"faults": len(self._faults)}
        if request.route == "DELETE /_fake/faults":
            self.clear_faults()
            return 200, {"faults": 0}
        return error(404, "not_found", path=request.path)

    # -- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Reply:
        allowed = []
        for method, pattern, attr in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            handler: Callable[..., Reply] = getattr(self, attr)
            return handler(request, **match.groupdict())
        if allowed:
            return error(405, "method_not_allowed", allowed=sorted(allowed))
        return error(404, "not_found", path=request.path)

    def _answer(self, request: Request) -> _Answer:
        with self.lock:
            self.requests.append(request)
            control = self.control(request)
            if control is not None:
                return _Answer(*_unpack(control))
            fault = self._take_fault(request)
            if fault is not None and not fault.after_effect and (fault.status or fault.drop):
                if fault.drop:
                    return _Answer(0, None, {}, fault.delay, drop=True)
                return _Answer(fault.status or 503, _fault_body(fault), fault.headers,
                               fault.delay + self.latency)
            try:
                status, body, headers = _unpack(self._dispatch(request))
            except Exception as e:  # a bug in the fake: say so loudly, in the answer
                status, body, headers = 500, {"error": "fake_bug",
                                              "detail": f"{type(e).__name__}: {e}"}, {}
            if fault is None:
                return _Answer(status, body, headers, self.latency)
            if fault.drop:
                return _Answer(0, None, {}, fault.delay, drop=True)
            if fault.status is not None:
                status, body, headers = fault.status, _fault_body(fault), fault.headers
            return _Answer(status, body, headers, fault.delay + self.latency)

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"_invalid_json": raw.decode(errors="replace")}
        request = Request(method=http.command, path=parts.path, query=parse_qs(parts.query),
                          headers={k.lower(): v for k, v in http.headers.items()}, body=body,
                          received_at=self.now())
        answer = self._answer(request)
        if answer.delay:
            time.sleep(answer.delay)  # outside the lock: other requests go on
        if answer.drop:
            http.close_connection = True
            return
        request.status = answer.status
        data = json.dumps(answer.body).encode()
        http.send_response(answer.status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            http.send_header(name, value)
        http.end_headers()
        http.wfile.write(data)

    def _take_fault(self, request: Request) -> Fault | None:
        for fault in self._faults:
            if fault.matches(request):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None


def _unpack(reply: Reply) -> tuple[int, Any, dict[str, str]]:
    if len(reply) == 2:
        return reply[0], reply[1], {}
    return reply[0], reply[1], dict(reply[2])


def _fault_body(fault: Fault) -> Any:
    return fault.body if fault.body is not None else {"error": "injected",
                                                      "after_effect": fault.after_effect}


def main(argv: list[str] | None = None) -> int:
    """``python -m machines.fakes NAME[:PORT]...``: serve fakes until Ctrl-C.

    NAME is a module of `machines.fakes` that sets ``FAKE = ItsServiceClass`` (``billing``,
    ``mail``, ...) or ``package.module:Class``. Each is served on PORT, or its `default_port`.
    Prints one ``export VAR=URL`` line per fake, for the shell that runs the worker."""
    import argparse
    import importlib
    import signal

    parser = argparse.ArgumentParser(prog="python -m machines.fakes",
                                     description="Serve fake outside services on 127.0.0.1.")
    parser.add_argument("fakes", nargs="+", metavar="NAME[:PORT]")
    args = parser.parse_args(argv)
    services: list[FakeService] = []
    for spec in args.fakes:
        head, _, tail = spec.rpartition(":")
        target, port = (head, tail) if head and tail.isdigit() else (spec, "")
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name if "." in module_name
                                         else f"machines.fakes.{module_name}")
        cls = getattr(module, attr or "FAKE", None)
        if not (isinstance(cls, type) and issubclass(cls, FakeService)):
            parser.error(f"{spec}: {module.__name__} has no FakeService "
                         f"{attr or 'FAKE'!r}")
        services.append(cls(port=int(port) if port else cls.default_port).start())
    for service in services:
        print(f"export {service.env_var or service.name.upper() + '_URL'}={service.url}"
              f"  # {service.name}: GET {service.url}/_fake/state", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for service in services:
        service.stop()
    return 0
