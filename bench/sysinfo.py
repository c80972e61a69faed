"""The machine and software a run measured: printed with every result, since figures from
different machines do not compare."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import Config

__all__ = ["config_dict", "git_revision", "load_average", "machine", "software"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """CPU, cores, memory and OS."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(),
            "os": platform.platform(), "hostname": platform.node()}


def software() -> dict[str, str]:
    """Python and the library versions that matter."""
    versions = {"python": platform.python_version()}
    for dist in ("statemachine", "sqlalchemy", "psycopg", "psycopg-binary", "cattrs", "attrs"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def git_revision() -> dict[str, Any]:
    """The checked-out commit and whether the tree had local changes (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never refresh (write) the index
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, env=env,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: others' work on a shared machine shows here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def config_dict(cfg: Config) -> dict[str, Any]:
    """The configuration, JSON-ready, without the password of the server URL."""
    from sqlalchemy.engine import make_url

    data = dataclasses.asdict(cfg)
    data["pg_url"] = make_url(cfg.pg_url).render_as_string(hide_password=True)
    data["output"] = str(cfg.output)
    data["workers"] = list(cfg.workers)
    data["modes"] = list(cfg.modes)
    data["sections"] = list(cfg.sections)
    return data
