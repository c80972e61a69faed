"""What the billing, drip and fleet tests' worker processes run: ``--app tests.jobs_apps:NAME``.

The factories are the machines' own (`machines.billing:app`, ...), given an httpx client that,
when ``JOBS_KILL`` is set (``after POST /charges``, fnmatch on the path), SIGKILLs its own worker
process at that point: after the service answered, before the handler returned, so nothing of that
transition is committed. The worst moment for a charge or a mail, exactly. It does so once per
test: the first process to get there creates ``$JOBS_MARKS/killed`` and dies; a worker started
after it runs on.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from pathlib import Path

import httpx

import machines.billing
import machines.drip
import machines.fleet
from machines._http import TIMEOUT
from statemachine import Machine, Schedule


def _http() -> httpx.Client:
    when, _, route = os.environ.get("JOBS_KILL", "").partition(" ")

    def on_response(response: httpx.Response) -> None:
        request = response.request
        if when == "after" and fnmatch.fnmatchcase(f"{request.method} {request.url.path}", route):
            mark = Path(os.environ["JOBS_MARKS"]) / "killed"
            try:
                mark.touch(exist_ok=False)
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)

    return httpx.Client(timeout=TIMEOUT, event_hooks={"response": [on_response]})


def billing() -> list[Machine | Schedule]:
    return machines.billing.app(_http())



def drip() -> list[Machine]:
    return machines.drip.app(_http())


def fleet() -> list[Machine]:
    return machines.fleet.app(_http())
