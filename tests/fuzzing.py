"""The Hypothesis settings every fuzz test uses: seeded (the same cases on every run, so a CI failure
reproduces locally), no example database, no per-example deadline on a shared machine, and a bounded
number of cases so that the whole fuzz run stays a small part of the suite. ``MODELGATE_FUZZ_SCALE=10`` runs
ten times the cases (a deeper search by hand; CI runs the default)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = int(os.environ.get("MODELGATE_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
