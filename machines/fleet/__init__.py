"""A dynamic fleet (`Fleet`): one workflow per server pool, kept at its target by provisioning and
teardown children. See docs/machines/fleet.md.

Run it by hand::

    python -m machines.fakes cloud
    export CLOUD_API_URL=http://127.0.0.1:8703
    statemachine worker --app machines.fleet:app
    statemachine start fleet --data '{"spec": {"pool": "web", "target": 3}}' --key pool:web \\
        --app machines.fleet:app
    statemachine send ID ScaleTo --data '{"size": 5}' --app machines.fleet:app
"""

from __future__ import annotations

import os

import httpx

from machines._http import client
from machines.fleet.machine import (
    IN_FLIGHT_DEADLINE,
    RESYNC,
    CreateDue,
    CreateFailed,
    DeleteDue,
    DeleteFailed,
    Drain,
    Fleet,
    InFlight,
    PoolDrained,
    PoolReconciling,
    PoolSpec,
    PoolWatching,
    ProvisionServer,
    ScaleTo,
    ServerCrashed,
    ServerCreated,
    ServerDeleted,
    TeardownServer,
)
from statemachine import Machine

__all__ = [
    "IN_FLIGHT_DEADLINE",
    "RESYNC",
    "CreateDue",
    "CreateFailed",
    "DeleteDue",
    "DeleteFailed",
    "Drain",
    "Fleet",
    "InFlight",
    "PoolDrained",
    "PoolReconciling",
    "PoolSpec",
    "PoolWatching",
    "ProvisionServer",
    "ScaleTo",
    "ServerCrashed",
    "ServerCreated",
    "ServerDeleted",
    "TeardownServer",
    "app",
]


def app(http: httpx.Client | None = None) -> list[Machine]:
    """The pool and its children, configured from ``CLOUD_API_URL``: what
    ``--app machines.fleet:app`` runs."""
    http = client(http)
    url = os.environ["CLOUD_API_URL"]
    return [Fleet(url, http), ProvisionServer(url, http), TeardownServer(url, http)]
