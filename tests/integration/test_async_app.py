"""The FastAPI recipe (docs/how-to/async.md, code in tests/async_app.py), on every backend: the
app's lifespan runs an `AsyncWorker`, an endpoint starts a workflow through `AsyncClient`, and
another awaits its end; the async step's HTTP call reaches the (mock) mail service once.
Also served for real by uvicorn, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from tests.async_app import create_app
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]


class MailService:
    """The mail API, faked: every message it was asked to send, by idempotency key."""

    def __init__(self) -> None:
        self.sent: dict[str, dict[str, str]] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # a round trip: other tasks run meanwhile
        key = request.headers["Idempotency-Key"]
        self.sent.setdefault(key, json.loads(request.content))
        return httpx.Response(201, json={"id": f"msg-{len(self.sent)}"})


def test_an_endpoint_starts_a_workflow_and_another_awaits_it(db_url: str) -> None:
    mail = MailService()

    async def scenario() -> None:
        api = httpx.AsyncClient(transport=httpx.MockTransport(mail), base_url="http://mail")
        app = create_app(db_url, api)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                started = [await http.post("/signups", params={"email": f"u{i}@example.com"})
                           for i in range(20)]
                ids = [r.json()["workflow_id"] for r in started]
                again = await http.post("/signups", params={"email": "u0@example.com"})
                assert again.json()["workflow_id"] == ids[0]  # the key: one workflow
                ended = await asyncio.gather(*(http.get(f"/signups/{i}", params={"wait": 60})
                                               for i in ids))
        assert [r.json() for r in ended] == [{"status": "done", "state": "Welcomed"}] * 20
        await api.aclose()

    asyncio.run(scenario())
    assert sorted(m["to"] for m in mail.sent.values()) == sorted(
        f"u{i}@example.com" for i in range(20))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_by_uvicorn_and_stopped_by_sigterm(db_url: str, tmp_path: Path) -> None:
    mail_port, app_port = _free_port(), _free_port()
    mail = subprocess.Popen(  # the mail API: any JSON answer with an id
        [sys.executable, "-c", MAIL_SERVER, str(mail_port)], cwd=ROOT)
    env = {**os.environ, "STATEMACHINE_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT),
           "MAIL_API": f"http://127.0.0.1:{mail_port}"}
    log = (tmp_path / "uvicorn.log").open("w")
    served = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tests.async_app:app_from_environment",
         "--port", str(app_port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{app_port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/docs", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "uvicorn to serve the app")
        wid = httpx.post(f"{base}/signups", params={"email": "a@example.com"}).json()
        done = httpx.get(f"{base}/signups/{wid['workflow_id']}", params={"wait": 60},
                         timeout=70).json()
        assert done == {"status": "done", "state": "Welcomed"}
        served.send_signal(signal.SIGTERM)
        # uvicorn shuts the app down (the lifespan stops the worker), then dies of the signal.
        assert served.wait(60) == -signal.SIGTERM
    finally:
        for p in (served, mail):
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    said = (tmp_path / "uvicorn.log").read_text()
    assert "Application shutdown complete" in said, said


MAIL_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Mail(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"id": "msg-1"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Mail).serve_forever()
"""
