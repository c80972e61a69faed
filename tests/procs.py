"""What every test that starts worker processes shares: nothing outlives the test, and a failing
test shows what each worker printed."""

from __future__ import annotations

import abc
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[1]


class ProcessGroup(abc.ABC):
    """Subprocesses started by one test, by name. As a context manager: on exit every one still
    running is killed, and if the test failed each one's log is printed."""

    procs: dict[str, subprocess.Popen[bytes]]

    @abc.abstractmethod
    def log(self, name: str) -> str:
        """What process `name` has printed so far."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
                pass
        if exc_type is not None:
            for name, proc in self.procs.items():
                print(f"\n===== worker {name} (exit code {proc.returncode}) =====")
                print(self.log(name))


class WorkerProcesses(ProcessGroup):
    """Spawns ``python -m statemachine --db URL worker ...`` processes, as operators start them,
    each logging to ``<log_dir>/<name>.log``."""

    def __init__(self, db_url: str, log_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, app: str, *, lease: float = 1.0, poll: float = 0.05,
              grace: float = 5.0, concurrency: int = 4,
              extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start worker `name` on ``--app app`` (replacing a dead one of that name)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("STATEMACHINE_DATABASE_URL", None)
        env.update(self.env)
        cmd = [sys.executable, "-m", "statemachine", "--db", self.db_url, "worker",
               "--app", app, "--name", name, "--concurrency", str(concurrency),
               "--lease", str(lease), "--poll", str(poll), "--grace", str(grace), *extra]
        with open(self.log_path(name), "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        """Where worker `name` writes its output."""
        return self.log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        """Wait until each worker has loaded its machines and is about to claim."""
        for name in names:
            proc = self.procs[name]

            def ready(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited with {proc.returncode} at start")
                return f"worker {name} running" in self.log(name)

            wait_until(ready, f"worker {name} to start", timeout=timeout)

    def alive(self) -> dict[str, subprocess.Popen[bytes]]:
        """The workers still running, by name."""
        return {n: p for n, p in self.procs.items() if p.poll() is None}
