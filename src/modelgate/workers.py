"""How many worker processes ``modelgate serve`` runs (issue 13 item 4).

``--workers auto`` (the default) is one worker per CPU core this process may use (affinity mask, cgroup CPU
quota), because one worker saturates one core (bench/README.md *Cores*: ``--workers 2`` vs 1 on
``GET /models`` and on 200 streams).

One exception keeps a single process: limits whose counters live in the process (a key's
``requests_per_minute``/``concurrent_streams``, a model's or provider's ``max_concurrency``) without
``MODELGATE_REDIS_URL``. Each worker would count on its own, so the effective limit would silently become N
times the configured one; ``auto`` says so in the log instead. ``--workers N`` is taken as given.
"""

from __future__ import annotations

import math
import os
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


def parse(value: str) -> str | int:
    """``auto`` or a positive number of workers (the ``--workers`` option's value)."""
    if value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a positive number or {AUTO!r}, not {value!r}") from None
    if number < 1:
        raise ValueError(f"--workers must be a positive number or {AUTO!r}, not {value!r}")
    return number


def in_process_limits(settings: Settings, catalogue: Catalogue, keys: KeyRing) -> bool:
    """Limits are configured and counted in the process (no Redis): workers would multiply them."""
    if settings.redis_url:
        return False
    return (
        any(key.requests_per_minute or key.concurrent_streams for key in keys.keys)
        or any(model.max_concurrency for model in catalogue.models)
        or any(entry.max_concurrency for entry in catalogue.providers.values())
    )


def resolve(requested: str | int, *, in_process_limits: bool) -> tuple[int, str | None]:
    """The number of workers, and why ``auto`` chose it when that needs saying in the log."""
    if requested != AUTO:
        return int(requested), None
    cores = usable_cores()
    if cores > 1 and in_process_limits:
        return 1, (
            f"--workers auto: 1 worker, not {cores}: limits are counted in the process (no MODELGATE_REDIS_URL), "
            f"and {cores} workers would each count on their own; set MODELGATE_REDIS_URL or --workers N"
        )
    return cores, None
