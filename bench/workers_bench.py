"""``serve --workers N`` (issue 13 item 4): ``GET /models`` and 200 streams with one worker vs two.

The machine has two cores, so there is no separate core set for the load: the server (every worker), wrk or
the load generator and the fake upstream all run on both cores (``taskset -c 0-1``), and the tables give the
CPU the load side used. A ratio below 2x is then partly the load's share of the same two cores; the
single-worker figure is measured the same way (its one worker may run on either core).

Variants are ``(label, workers, extra serve arguments)``; the runs are interleaved (repeat 1 of every variant,
then repeat 2, ...) so noise from the shared machine spreads over all of them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness import ALL_CORES, measured, settle
from models_bench import wrk
from stream_bench import loadgen, routes, summarize
from systems import STREAM_MODEL, start_fake, start_modelgate

Variant = tuple[str, int, tuple[str, ...]]
DEFAULT_VARIANTS: tuple[Variant, ...] = (("1 worker", 1, ()), ("2 workers", 2, ()))


def run(
    results: Path,
    *,
    repeats: int,
    seconds: float,
    stream_seconds: float,
    warmup: float,
    streams: int,
    connections: int,
    tokens: int,
    interval_ms: float,
    catalogue: dict[str, Any],
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
) -> dict[str, Any]:
    publisher, name = STREAM_MODEL.split("/", 1)
    upstream = catalogue["configurations"][publisher][name]["configuration"]["model"]
    route = routes(upstream)["api"]
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=[upstream], core=ALL_CORES)
    out: dict[str, Any] = {"streams": streams, "connections": connections, "variants": {}}
    servers = {}
    try:
        for label, workers, extra in variants:
            servers[label] = start_modelgate(
                results, fake_url=fake.url, tag=f"-workers{workers}{''.join(extra)}", workers=workers, core=ALL_CORES
            )
            servers[label].note = f"`modelgate serve --workers {workers}{' ' + ' '.join(extra) if extra else ''}`"
            out["variants"][label] = {"workers": workers, "note": servers[label].note, "models": [], "stream": []}
            # warm every worker: enough connections that each worker accepts some
            wrk(f"{servers[label].url}/models", gzip_client=False, seconds=1, connections=connections, core=ALL_CORES)
            loadgen(servers[label].url, route, concurrency=20, seconds=2, warmup=0.5, tokens=tokens, core=ALL_CORES)
        for repeat in range(repeats):
            for label, server in servers.items():
                with measured(server.proc) as figures:
                    w = wrk(
                        f"{server.url}/models",
                        gzip_client=False,
                        seconds=seconds,
                        connections=connections,
                        core=ALL_CORES,
                        threads=2,
                    )
                out["variants"][label]["models"].append(
                    {"rps": w.rps, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "errors": w.errors, **figures}
                )
                print(f"  workers r{repeat + 1} {label:10} /models {w.rps:9,.0f} req/s cpu {figures.get('cpu', 0):.2f}")
            for label, server in servers.items():
                settle(server.proc)
                with measured(server.proc) as figures, measured(fake.proc) as fake_figures:
                    raw = loadgen(
                        server.url,
                        route,
                        concurrency=streams,
                        seconds=stream_seconds,
                        warmup=warmup,
                        tokens=tokens,
                        core=ALL_CORES,
                    )
                run_ = summarize(raw, figures, fake_figures)
                out["variants"][label]["stream"].append(run_)
                print(
                    f"  workers r{repeat + 1} {label:10} {streams} streams {run_['tokens_per_s']:9,.0f} tok/s "
                    f"TTFT p50 {run_['ttft_p50_ms'] or 0:.1f} ms cpu {run_['server_cpu'] or 0:.2f} "
                    f"errors {run_['errors']}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.proc.stop()
        fake.proc.stop()
    return out


def ratio(data: dict[str, Any], label: str, base: str, part: str, field: str) -> float | None:
    """Median ``field`` of ``label``'s ``part`` runs ÷ the same of ``base``."""
    try:
        mine = statistics.median(r[field] for r in data["variants"][label][part])
        theirs = statistics.median(r[field] for r in data["variants"][base][part])
    except (KeyError, statistics.StatisticsError):
        return None
    return mine / theirs if theirs else None
