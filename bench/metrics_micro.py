"""Per-request cost of the HTTP series, one worker vs ``serve --workers N`` (prometheus_client multiprocess mode).

    .venv/bin/python bench/metrics_micro.py

Each case runs in a fresh interpreter, because prometheus_client picks its value class (in-memory or
mmap-backed) once, at import, from ``PROMETHEUS_MULTIPROC_DIR``. Prints microseconds per operation.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

CASES = {
    "plain HttpRequests.observe (ours, either mode)": """
from modelgate.metrics import HttpRequests, _LATENCY_BUCKETS
h = HttpRequests(_LATENCY_BUCKETS)
op = lambda: h.observe("/models", "GET", 200, 0.0004)
""",
    "library Counter+Histogram, one process (lock)": """
from prometheus_client import CollectorRegistry, Counter, Histogram
from modelgate.metrics import _LATENCY_BUCKETS
r = CollectorRegistry()
c = Counter("c", "c", ["route", "method", "status"], registry=r)
hi = Histogram("h", "h", ["route"], buckets=_LATENCY_BUCKETS, registry=r)
op = lambda: (c.labels("/models", "GET", "200").inc(), hi.labels("/models").observe(0.0004))
""",
    "library Counter+Histogram, multiprocess (lock + mmap)": """
from prometheus_client import CollectorRegistry, Counter, Histogram
from modelgate.metrics import _LATENCY_BUCKETS
r = CollectorRegistry()
c = Counter("c", "c", ["route", "method", "status"], registry=r)
hi = Histogram("h", "h", ["route"], buckets=_LATENCY_BUCKETS, registry=r)
op = lambda: (c.labels("/models", "GET", "200").inc(), hi.labels("/models").observe(0.0004))
""",
    "Publisher.publish, 60 series all changed (per publish, not per request)": """
import pathlib
from modelgate.metrics import HttpRequests, _LATENCY_BUCKETS
from modelgate.worker_metrics import Publisher
h = HttpRequests(_LATENCY_BUCKETS)
p = Publisher(h, pathlib.Path(DIR))
keys = [(f"/r{i}", "GET", s) for i in range(20) for s in (200, 404, 500)]
def op():
    for k in keys:
        h.observe(*k, 0.0004)
    p.publish()
""",
    "Publisher.publish, nothing changed": """
import pathlib
from modelgate.metrics import HttpRequests, _LATENCY_BUCKETS
from modelgate.worker_metrics import Publisher
h = HttpRequests(_LATENCY_BUCKETS)
p = Publisher(h, pathlib.Path(DIR))
for i in range(20):
    for s in (200, 404, 500):
        h.observe(f"/r{i}", "GET", s, 0.0004)
p.publish()
op = p.publish
""",
}

TIMER = """
import timeit
op()
n, t = timeit.Timer(op).autorange()
best = min(timeit.Timer(op).repeat(5, n)) / n
print(f"{best * 1e6:9.2f} us")
"""


def main() -> None:
    for name, setup in CASES.items():
        with tempfile.TemporaryDirectory() as directory:
            env = {"PYTHONHASHSEED": "0"}
            if "multiprocess" in name or "Publisher" in name:
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            code = f"DIR = {directory!r}\n" + setup + TIMER
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            print(f"{out.stdout.strip()}  {name}")


if __name__ == "__main__":
    main()
