"""How many worker processes ``modelgate serve`` runs (issue 13 item 4), and how they start (item 5).

``--workers auto`` (the default) is one worker per CPU core this process may use (affinity mask, cgroup CPU
quota), because one worker saturates one core (bench/README.md *Cores*: ``--workers 2`` vs 1 on
``GET /models`` and on 200 streams).

One exception keeps a single process: limits whose counters live in the process (a key's
``requests_per_minute``/``concurrent_streams`` or budget, a model's or provider's ``max_concurrency``) without
``MODELGATE_REDIS_URL``. Each worker would count on its own, so the effective limit would silently become N
times the configured one; ``auto`` says so in the log instead. ``--workers N`` is taken as given, and the log
says what it does to such limits.

How they start: uvicorn's supervisor starts each worker with multiprocessing's *spawn*, a fresh interpreter
that imports the CLI, uvicorn and the whole app again (~0.6 s of CPU each, the workers competing for the cores
while the supervisor waited). ``forked_workers`` has it *fork* them instead, once the supervisor has imported
the app (``preload_app``): a worker then only builds its app and runs the lifespan, sharing the imported
modules' pages with the supervisor (bench/README.md *Start-up*). Nothing else runs in the supervisor when it
forks: no event loop, no thread, no socket but the listening one, no app instance (each worker builds its own,
so ledger connections, Redis clients and metric files belong to one process). A catalogue reload (SIGHUP)
forks the new workers from the same supervisor, so they read the catalogue file again but run the code the
supervisor loaded: upgrading modelgate itself needs a restart.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from multiprocessing.context import ForkProcess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelgate.auth import KeyRing
    from modelgate.catalogue import Catalogue
    from modelgate.settings import Settings

AUTO = "auto"


#: cgroup v2's CPU bandwidth limit of this process's group: "max 100000" (none) or "<quota> <period>".
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Cores a cgroup v2 CPU quota allows (rounded up), or None without one.

    A container limited by ``--cpus`` (a quota, not a cpuset) still sees every host core in its affinity mask;
    a worker per host core would then fight over the quota."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity mask (``taskset``, a cpuset), capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_cpu_max)
    return max(1, min(cores, limit) if limit is not None else cores)


#: Workers per usable core ``--workers N`` may ask for: more only compete for the cores (one saturates one).
WORKERS_PER_CORE = 4


def max_workers() -> int:
    """The most workers ``--workers N`` takes: ``--workers 100000`` forked until the machine stopped answering."""
    return max(8, WORKERS_PER_CORE * usable_cores())


def parse(value: str) -> str | int:
    """``auto`` or a positive number of workers up to ``max_workers()`` (the ``--workers`` option's value)."""
    if value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a positive number or {AUTO!r}, not {value!r}") from None
    if number < 1:
        raise ValueError(f"--workers must be a positive number or {AUTO!r}, not {value!r}")
    if number > (most := max_workers()):
        raise ValueError(
            f"--workers {number}: at most {most} ({WORKERS_PER_CORE} per usable CPU core, "
            f"{usable_cores()} here; one worker saturates one core)"
        )
    return number


def in_process_limits(settings: Settings, catalogue: Catalogue, keys: KeyRing) -> bool:
    """Limits are configured and counted in the process (no Redis): workers would multiply them."""
    if settings.redis_url:
        return False
    return (
        # A budget's counters are the limits' (``Limiter.budgets``): N workers would let a key spend N budgets.
        any(key.requests_per_minute or key.concurrent_streams or key.budget is not None for key in keys.keys)
        or any(model.max_concurrency for model in catalogue.models)
        or any(entry.max_concurrency for entry in catalogue.providers.values())
    )


def resolve(requested: str | int, *, in_process_limits: bool) -> tuple[int, str | None]:
    """The number of workers, and what needs saying of it in the log: why ``auto`` chose it, or that ``--workers N``
    multiplies limits counted in the process (taken as given, but not in silence)."""
    if requested != AUTO:
        count = int(requested)
        if count > 1 and in_process_limits:
            return count, (
                f"--workers {count}: limits are counted in the process (no MODELGATE_REDIS_URL), so each of the "
                f"{count} workers counts on its own and a limit lets through up to {count} times as much; "
                "set MODELGATE_REDIS_URL to count them across workers"
            )
        return count, None
    cores = usable_cores()
    if cores > 1 and in_process_limits:
        return 1, (
            f"--workers auto: 1 worker, not {cores}: limits are counted in the process (no MODELGATE_REDIS_URL), "
            f"and {cores} workers would each count on their own; set MODELGATE_REDIS_URL or --workers N"
        )
    return cores, None


# --- starting the workers -------------------------------------------------------------------------------

#: prometheus_client's multiprocess directory (the library reads this variable once, when first imported).
METRICS_DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """For ``serve --workers N``, before the workers start and before anything imports prometheus_client:
    ``PROMETHEUS_MULTIPROC_DIR`` if set (the operator keeps it empty between runs, as prometheus_client
    requires), else a fresh private directory, removed on exit. One ``/metrics`` for all workers
    (``worker_metrics.py``)."""
    given = os.environ.get(METRICS_DIRECTORY_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="modelgate-metrics-"))
    os.environ[METRICS_DIRECTORY_ENV] = str(path)  # inherited by the workers
    try:
        yield path
    finally:
        del os.environ[METRICS_DIRECTORY_ENV]
        shutil.rmtree(path, ignore_errors=True)


def preload_app() -> None:
    """Import, in the supervisor, every module a worker imports to build and serve its app (nothing is run).

    Inside ``shared_directory``, before anything imported prometheus_client: forked workers keep the mode the
    library chose when the supervisor imported it."""
    import modelgate.app
    import modelgate.routes
    import modelgate.routes.direct  # noqa: F401  (imported by create_app)
    from modelgate.worker_metrics import multiprocess_directory

    if multiprocess_directory() is None:  # a worker would count on its own, and /metrics show one worker's share
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")


class WorkerProcess(ForkProcess):
    """A worker forked from the supervisor, starting with the signal handlers a fresh interpreter has.

    uvicorn's supervisor catches its signals to queue them for its own loop; a forked worker would inherit that
    and silently drop e.g. a SIGHUP that arrives before its app installs its own handler."""

    def run(self) -> None:
        from uvicorn.supervisors.multiprocess import SIGNALS

        for number in SIGNALS:
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
        super().run()


class _ForkContext:
    """What uvicorn's ``get_subprocess`` asks of its multiprocessing context: a ``Process`` class."""

    Process = WorkerProcess


@contextlib.contextmanager
def forked_workers() -> Iterator[bool]:
    """While open, uvicorn's supervisor forks its workers (after ``preload_app``) instead of spawning them.

    Yields whether it does: not where ``fork`` is unavailable or unsafe (another thread is running; a fork copies
    only the calling thread, so a lock held elsewhere would stay locked in the worker for good), nor with a
    uvicorn that no longer starts workers through ``uvicorn._subprocess.spawn``."""
    from uvicorn import _subprocess

    if not hasattr(os, "fork") or threading.active_count() > 1 or not hasattr(_subprocess, "spawn"):
        yield False
        return
    spawn = _subprocess.spawn
    _subprocess.spawn = _ForkContext  # type: ignore[assignment]  # read by get_subprocess at each worker start
    try:
        yield True
    finally:
        _subprocess.spawn = spawn
