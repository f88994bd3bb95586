"""A throwaway PostgreSQL cluster on a free loopback port, for the ledger tests.

``initdb`` into a temporary directory, ``postgres`` on 127.0.0.1 with its socket in that directory,
trust authentication for one superuser, no fsync (nothing here must survive the test session).
PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user that
Debian's package creates (else ``nobody``).

The binaries: ``initdb`` on PATH, else Debian's ``/usr/lib/postgresql/<version>/bin`` (not on PATH);
``scripts/test.sh`` installs the ``postgresql`` package when neither has them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import free_port

SUPERUSER = "modelgate"


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: PATH first, then Debian's newest versioned directory."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("postgres") is not None:
        return Path(initdb).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
    )
    return versions[0].parent if versions else None


def _run_as() -> str | None:
    """The user to run PostgreSQL as when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class PostgresCluster:
    bin_dir: Path
    data: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str | None
    _databases: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server ("fast" shutdown: its clients' connections are cut), as a database that goes away."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def start(self) -> None:
        """Start the stopped server again on the same port and data: the database comes back."""
        self.process = _start_postgres(self.bin_dir, self.data, self.port, self.user)
        if not _wait_ready(self.bin_dir, self.port, self.process):
            raise RuntimeError("postgres did not start again")

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a fresh name unless given); its ``postgresql://`` URL."""
        self._databases += 1
        name = name or f"ledger_{os.getpid()}_{self._databases}"
        subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name],
            check=True,
            capture_output=True,
        )
        return self.url(name)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs it)")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="modelgate-pg-"))
    data = root / "data"
    if user is not None:
        record = pwd.getpwnam(user)
        os.chown(root, record.pw_uid, record.pw_gid)
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=root,
            user=user,
        )
        for _ in range(3):  # another process may take the free port before postgres binds it
            port = free_port()
            process = _start_postgres(bin_dir, data, port, user)
            if _wait_ready(bin_dir, port, process):
                break
            process.kill()
            process.wait()
        else:
            raise RuntimeError("postgres did not start")
        cluster = PostgresCluster(bin_dir, data, port, process, user)
        try:
            yield cluster
        finally:
            if cluster.process.poll() is None:  # a test may have stopped it
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start_postgres(bin_dir: Path, data: Path, port: int, user: str | None) -> subprocess.Popen[bytes]:
    root = data.parent
    return subprocess.Popen(
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
        user=user,
    )


def _wait_ready(bin_dir: Path, port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while process.poll() is None and not _ready(bin_dir, port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll() is None and _ready(bin_dir, port)


def _ready(bin_dir: Path, port: int) -> bool:
    if not _accepts(port):
        return False
    isready = bin_dir / "pg_isready"
    if not isready.exists():
        return True
    done = subprocess.run(
        [str(isready), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-q"], capture_output=True, check=False
    )
    return done.returncode == 0
