"""The cyclic garbage collector, set for a long-running server (``modelgate serve`` only).

CPython collects its youngest generation every 700 net new container objects, and walks the whole heap
(every module, the catalogue, pydantic's and FastAPI's tables) once enough has survived. Under load that was
11-13% of the server's CPU at 200 streams (perf: ``gc_collect_main``, ``visit_decref``, ``visit_reachable``)
and full collections of up to 146 ms every few seconds: stalls every request in flight waits through.

Two things fixed it. Each request used to leave ~26 objects in reference cycles (its scope, the observer's
send closures, its state's cleanups, uvicorn's cycle): the observer now breaks them when the request ends,
so refcounting frees a request and nothing is left for the collector to find (``observer.py``,
``tests/test_request_cycles.py``). And with the thresholds below, a young collection comes every few
thousand objects and full ones rarely. Measured over the same load (`bench/README.md`, "Second pass"):
collections took 1.7 s in ~25 s before, 106 ms with the cycles broken, 15 ms with these thresholds as well.
"""

from __future__ import annotations

import gc

#: Net new container objects between two young collections (CPython's default: 700).
YOUNG = 10_000
#: Young collections between two middle ones, and middle between two full ones (default: 10 and 10).
OLDER = 20


def tune_for_serving() -> None:
    gc.set_threshold(YOUNG, OLDER, OLDER)
