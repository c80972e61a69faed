"""The FastAPI recipe of docs/how-to/async.md, run by ``tests/integration/test_async_app.py``.

A machine whose one step awaits an HTTP call (``httpx.AsyncClient``) to a mailing service, an
`AsyncWorker` started and stopped by the app's lifespan, and two endpoints: one starts a
workflow through `AsyncClient`, one awaits its end. The guide quotes this file verbatim.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx
from fastapi import FastAPI

from statemachine import AsyncClient, AsyncWorker, Context, Machine, RetryPolicy, Store, step


@attrs.frozen
class Welcome:
    email: str


@attrs.frozen
class Welcomed:
    message_id: str


class Onboarding(Machine):
    initial = Welcome
    terminal = (Welcomed,)

    def __init__(self, mail: httpx.AsyncClient) -> None:
        self.mail = mail

    @step(retry=RetryPolicy(max_attempts=5))
    async def send_welcome(self, state: Welcome, ctx: Context) -> Welcomed:
        response = await self.mail.post(
            "/messages", json={"to": state.email, "template": "welcome"},
            headers={"Idempotency-Key": ctx.idempotency_key})
        response.raise_for_status()
        return Welcomed(response.json()["id"])


def create_app(database_url: str, mail: httpx.AsyncClient) -> FastAPI:
    store = Store(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncWorker(store, [Onboarding(mail)], concurrency=200, grace=10):
            app.state.workflows = AsyncClient(store, [Onboarding])
            yield
        store.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/signups")
    async def sign_up(email: str) -> dict[str, str]:
        workflow_id = await app.state.workflows.start(Onboarding, Welcome(email), key=email)
        return {"workflow_id": str(workflow_id)}

    @app.get("/signups/{workflow_id}")
    async def signup(workflow_id: uuid.UUID, wait: float = 0) -> dict[str, str]:
        workflows: AsyncClient = app.state.workflows
        info = await (workflows.wait(workflow_id, timeout=wait) if wait
                      else workflows.get(workflow_id))
        return {"status": info.status, "state": info.state_name}

    return app


def app_from_environment() -> FastAPI:
    """``uvicorn --factory tests.async_app:app_from_environment``."""
    mail = httpx.AsyncClient(base_url=os.environ["MAIL_API"])
    return create_app(os.environ["STATEMACHINE_DATABASE_URL"], mail)
