"""What every test that starts worker processes shares: nothing outlives the test, and a failing
test shows what each worker printed."""

from __future__ import annotations

import abc
import subprocess
from types import TracebackType
from typing import Self


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
