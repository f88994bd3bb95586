"""How many worker processes ``modelgate serve`` runs (issue 13 item 4).

``--workers auto`` (the default) is one worker per CPU core this process may run on, because one worker
saturates one core (bench/README.md *Cores*: ``--workers 2`` vs 1 on ``GET /models`` and on 200 streams).
One exception keeps a single process: limits whose counters live in the process (a key's
``requests_per_minute``/``concurrent_streams``, a model's or provider's ``max_concurrency``) without
``MODELGATE_REDIS_URL``. Each worker would count on its own, so the effective limit would silently become N
times the configured one; ``auto`` says so in the log instead. ``--workers N`` is taken as given.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelgate.auth import KeyRing
    from modelgate.catalogue import Catalogue
    from modelgate.settings import Settings

AUTO = "auto"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or ``taskset``'s share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


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
