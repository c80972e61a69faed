"""Server provisioning: create a server through a cloud API, wait for it to boot (a polling
step: backoff and a deadline, no history row per poll), health-check it, register its DNS record
at Cloudflare, and end `Ready`; any step that fails for good after the create tears down what was
created and ends `ProvisioningFailed`, saying what failed and what was cleaned up::

    ServerRequested --create_server--> Booting --wait_for_boot (polls)--> Booted
        --check_health--> Healthy --register_dns--> Ready
    (any of the four fails for good) --tear_down--> TearingDown --destroy--> ProvisioningFailed

How each call is made safe to repeat:

- **The create**: server names are unique per project, so a create repeated after a lost answer
  (or a killed worker) is refused with ``uniqueness_error``; the step then finds the server by
  name and takes it if its ``workflow`` label is this workflow's id.
- **The DNS record** is ensured (found, updated or created), never blindly added.
- **The deletes** treat "already gone" (404) as done and say so in `ProvisioningFailed`.

The package: `states`, `cloud` (the cloud API's client), `machine`. Run it by hand: see
docs/machines/provisioning.md (``statemachine worker --app machines.provisioning:from_env``).
"""

from machines.provisioning.cloud import CloudAPI, CloudRejected, CloudUnavailable
from machines.provisioning.machine import (
    BOOT_POLL,
    CLEANUP_RETRY,
    HEALTH_RETRY,
    SERVICE_RETRY,
    Provisioning,
    ServerGone,
    from_env,
)
from machines.provisioning.states import (
    Booted,
    Booting,
    Healthy,
    ProvisioningFailed,
    Ready,
    ServerRequested,
    ServerSpec,
    TearingDown,
)

__all__ = [
    "BOOT_POLL",
    "CLEANUP_RETRY",
    "HEALTH_RETRY",
    "SERVICE_RETRY",
    "Booted",
    "Booting",
    "CloudAPI",
    "CloudRejected",
    "CloudUnavailable",
    "Healthy",
    "Provisioning",
    "ProvisioningFailed",
    "Ready",
    "ServerGone",
    "ServerRequested",
    "ServerSpec",
    "TearingDown",
    "from_env",
]
