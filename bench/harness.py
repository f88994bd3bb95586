"""Process plumbing for the benchmarks: pinned child processes, readiness, CPU and RSS of a process tree.

Cores: the server under test runs on ``SERVER_CORE`` and everything that generates or answers load (wrk,
the load generator, the fake upstream, this orchestrator) on ``LOAD_CORE``, via ``taskset``, so the
server's figures are one core's worth and the load side never steals from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SERVER_CORE = 0
LOAD_CORE = 1
#: Both cores (``taskset -c`` syntax): where ``--workers 2`` and its load run, the machine having only two.
ALL_CORES = "0-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(core: int | str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


@dataclass
class Proc:
    """A child process (usually a server) with its log file; stop() ends it and every process it started."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User+system CPU of the whole tree so far (children included)."""
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        # The process group holds the server and anything it spawned (workers, reloaders).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    core: int | str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    popen = subprocess.Popen(
        pinned(core, argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,  # own process group: stop() reaches its children, Ctrl-C of the bench does not
    )
    log.close()
    return Proc(name, popen, log_path)


def wait_http(proc: Proc, url: str, timeout: float = 60.0, expect: int = 200) -> None:
    """Wait until ``url`` answers ``expect``; if it dies or never does, stop it and fail with its log tail."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == expect:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout:.0f}s ({last}):\n{proc.log_tail()}")


def wait_tcp(proc: Proc, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} not listening on {port} after {timeout:.0f}s:\n{proc.log_tail()}")


@dataclass
class Sampler:
    """Samples a process tree's RSS every ``interval`` seconds in a thread; keeps (t, rss) pairs."""

    proc: Proc
    interval: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._t0, self.proc.rss_bytes()))
            if self._stop.wait(self.interval):
                return

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


def settle(proc: Proc | None, *, idle: float = 0.05, timeout: float = 60.0) -> float:
    """Wait until ``proc`` is idle (below ``idle`` cores over half a second); return the seconds waited.

    A server that keeps working on streams whose clients left (LiteLLM does, for seconds) would otherwise
    charge that backlog to the next run."""
    if proc is None:
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = proc.cpu_seconds()
        time.sleep(0.5)
        if proc.cpu_seconds() - before < idle * 0.5:
            break
    return time.monotonic() - t0


def core_busy_seconds(core: int) -> float:
    times = psutil.cpu_times(percpu=True)[core]
    busy: float = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return busy


@contextlib.contextmanager
def measured(proc: Proc | None, core: int = SERVER_CORE) -> Iterator[dict[str, float]]:
    """Over the ``with`` block: CPU of ``proc`` in cores, its peak RSS, and ``foreign``, the share of ``core``
    used by other processes (the machine is shared: a figure taken while something else ran on the server's
    core is flagged by it rather than silently low)."""
    result: dict[str, float] = {}
    busy0, t0 = core_busy_seconds(core), time.monotonic()
    if proc is None:
        yield result
        result["foreign"] = (core_busy_seconds(core) - busy0) / (time.monotonic() - t0)
        return
    cpu0 = proc.cpu_seconds()
    with Sampler(proc) as sampler:
        yield result
    wall = time.monotonic() - t0
    result["cpu_s"] = proc.cpu_seconds() - cpu0
    result["cpu"] = result["cpu_s"] / wall
    result["foreign"] = max(0.0, (core_busy_seconds(core) - busy0) / wall - result["cpu"])
    result["peak_rss"] = float(sampler.peak)


def run_pinned(argv: Sequence[str], *, core: int | str, timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run a load tool pinned to ``core``; return its stdout (raise with stderr on failure)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    done = subprocess.run(
        pinned(core, argv), capture_output=True, timeout=timeout, env=full_env, check=False, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
