"""A throw-away PostgreSQL cluster for tests that take the database away (restart, stop, kill
connections). Never the shared server on 5432: each cluster lives in its own temporary directory,
on a free port, and is removed by `cleanup()` whatever happened.

    with PgCluster.create() as cluster:
        url = cluster.url           # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        cluster.restart()
        cluster.stop(); ...; cluster.start()
        cluster.terminate_backends()

The binaries come from ``$(pg_config --bindir)``; when running as root (CI) they run as the
``postgres`` user through ``runuser -u postgres --``, in a directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

__all__ = ["PgCluster", "available"]


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(out)
    return path if (path / "initdb").exists() and (path / "pg_ctl").exists() else None


def available() -> str | None:
    """None when a cluster can be made here, else why not (for a skip message)."""
    if _bindir() is None:
        return "no PostgreSQL server binaries (pg_config --bindir has no initdb/pg_ctl)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One PostgreSQL cluster in a temporary directory; see the module docstring."""

    def __init__(self, root: Path, port: int, bindir: Path) -> None:
        self.root = root
        self.port = port
        self.bindir = bindir
        self.data = root / "data"
        self.log = root / "server.log"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    @classmethod
    def create(cls) -> PgCluster:
        """initdb and start a new cluster; on any failure nothing is left behind."""
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError(available() or "no PostgreSQL binaries")
        root = Path(tempfile.mkdtemp(prefix="sm-pgcluster-"))
        cluster = cls(root, _free_port(), bindir)
        try:
            if os.geteuid() == 0:
                shutil.chown(root, "postgres", "postgres")
            cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                         "--no-sync", "-E", "UTF8")
            cluster.start()
        except BaseException:
            cluster.cleanup()
            raise
        return cluster

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self.server_log()}")

    def server_log(self) -> str:
        """What the server has logged (for a failing test's report)."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (f"-c fsync=off -c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-k {self.root} -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")
        self._wait_accepting()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: smart, fast or immediate); connections are cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop and start again (fast shutdown: every connection is terminated)."""
        self.stop()
        self.start()

    def running(self) -> bool:
        """Whether the server's postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def terminate_backends(self, *, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every other client connection; returns how many."""
        sql = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
               "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
        params: tuple[str, ...] = ()
        if application_name is not None:
            sql += " AND application_name = %s"
            params = (application_name,)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    @property
    def dsn(self) -> str:
        """The libpq connection string (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _wait_accepting(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def cleanup(self) -> None:
        """Stop the server if it runs (immediately) and remove the cluster's directory."""
        try:
            if self.running():
                self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pid_file = self.data / "postmaster.pid"
            try:  # pg_ctl failed: kill the postmaster ourselves so nothing outlives the test
                os.kill(int(pid_file.read_text().split()[0]), 9)
            except (OSError, ValueError, IndexError):
                pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
