"""Soak (issue 5): N concurrent streams through modelgate for M minutes, RSS sampled every few seconds.

Growth is measured from the end of the warm-up (a fifth of the run, at most one minute: pools, arenas and
caches filling once is not a leak) to the end, each point the median of three neighbouring samples so one
sample taken mid-burst does not decide it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, pinned
from stream_bench import routes
from systems import BENCH, STREAM_MODEL, VENV_BIN, start_fake, start_modelgate


def run(
    results: Path,
    *,
    minutes: float,
    streams: int,
    interval_s: float,
    tokens: int,
    interval_ms: float,
    route_key: str,
    server: str,
    catalogue: dict[str, Any],
) -> dict[str, Any]:
    publisher, name = STREAM_MODEL.split("/", 1)
    upstream = catalogue["configurations"][publisher][name]["configuration"]["model"]
    route = routes(upstream)[route_key]
    seconds = minutes * 60
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=[upstream])
    target = None
    try:
        target = start_modelgate(results, server=server, fake_url=fake.url, tag="-soak")
        argv = [str(VENV_BIN / "python"), str(BENCH / "loadgen.py"), "--url", target.url + route.path]
        argv += ["--body", json.dumps(route.body), "--format", route.fmt, "--concurrency", str(streams)]
        argv += ["--seconds", str(seconds), "--warmup", "0", "--expect-tokens", str(tokens)]
        samples: list[tuple[float, int]] = []
        cpu0 = target.proc.cpu_seconds()
        t0 = time.monotonic()
        with subprocess.Popen(pinned(LOAD_CORE, argv), stdout=subprocess.PIPE, text=True) as load:
            out: list[str] = []
            reader = threading.Thread(target=lambda: out.append(load.stdout.read() if load.stdout else ""))
            reader.start()
            while load.poll() is None:
                samples.append((time.monotonic() - t0, target.proc.rss_bytes()))
                print(f"  soak t={samples[-1][0]:5.0f}s rss {samples[-1][1] / 2**20:6.1f} MB", flush=True)
                deadline = time.monotonic() + interval_s
                while load.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
            reader.join()
        wall = time.monotonic() - t0
        cpu = (target.proc.cpu_seconds() - cpu0) / wall
        samples.append((wall, target.proc.rss_bytes()))
        if load.returncode != 0:
            raise RuntimeError(f"loadgen failed ({load.returncode})")
        raw = json.loads(out[0])
    finally:
        if target is not None:
            target.proc.stop()
        fake.proc.stop()
    warmup_s = min(60.0, seconds / 5)
    after = [rss for t, rss in samples if t >= warmup_s]
    start_rss = statistics.median(after[:3]) if after else samples[0][1]
    end_rss = statistics.median(after[-3:]) if after else samples[-1][1]
    return {
        "minutes": minutes,
        "streams": streams,
        "path": route.path,
        "interval_s": interval_s,
        "warmup_s": warmup_s,
        "rss": samples,
        "rss_after_warmup_mb": start_rss / 2**20,
        "rss_end_mb": end_rss / 2**20,
        "rss_peak_mb": max(rss for _, rss in samples) / 2**20,
        "growth": (end_rss - start_rss) / start_rss,
        "ok": raw["ok"],
        "errors": raw["errors"],
        "error_samples": raw["error_samples"],
        "cut": raw["cut"],
        "tokens_per_s": raw["tokens"] / raw["wall_s"],
        "server_cpu": cpu,
        "note": target.note if target is not None else "",
    }
