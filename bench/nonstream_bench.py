"""Non-streamed ``POST /v1/chat/completions`` (``stream: false``) against a fake that answers at once.

Two measurements per system, each beside the fake read directly in the same run:

- **Saturation**: wrk (1 thread, load core, 64 connections, a Lua script for the POST) for ``seconds``;
  req/s and the server's CPU over the run give *req/s per core* (req/s ÷ cores used), which stays
  comparable when a system does not fill its core.
- **Added latency at a fifth of capacity**: ``paced.py`` sends requests at fixed times (open loop, latency
  from the scheduled time, so no coordinated omission) at a fifth of *that system's* measured req/s, then the
  same rate straight at the fake; *added* = the system's percentile minus the fake's percentile at that rate.

The fake (``fake_upstream.py --interval-ms 0``) answers ``stream: false`` with one JSON ``chat.completion``
and ``stream: true`` with every chunk at once, so a gateway that still fetches a non-streamed call as a stream
(the previous release) is not charged for token gaps either.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, measured, run_pinned
from models_bench import WrkRun, parse_wrk
from stream_bench import PROMPT, percentile
from systems import (
    BENCH,
    FAKE_API_KEY,
    LITELLM_MASTER_KEY,
    STREAM_MODEL,
    VENV_BIN,
    Server,
    portkey_headers,
    start_fake,
    start_litellm,
    start_modelgate,
    start_portkey,
)

#: Tokens in the fake's reply: a tiny completion, so the measurement is the per-request path, not JSON size.
TOKENS = 8
PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    path: str
    body: dict[str, Any]
    headers: tuple[str, ...]


def wrk_post(
    url: str, body: dict[str, Any], headers: tuple[str, ...], *, seconds: float, connections: int, lua: Path
) -> WrkRun:
    """wrk with a Lua script that POSTs ``body`` (JSON) with ``headers``."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{json.dumps(body)}]==]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    for header in headers:
        name, _, value = header.partition(":")
        lines.append(f'wrk.headers["{name.strip()}"] = [==[{value.strip()}]==]')
    lua.write_text("\n".join(lines) + "\n")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(lua), url]
    return parse_wrk(run_pinned(argv, core=LOAD_CORE, timeout=seconds + 60))


def paced(url: str, target: Target, *, rate: float, seconds: float) -> dict[str, Any]:
    argv = [str(VENV_BIN / "python"), str(BENCH / "paced.py"), "--url", url, "--body", json.dumps(target.body)]
    argv += ["--rate", f"{rate:.1f}", "--seconds", str(seconds), "--warmup", str(min(1.0, seconds / 5))]
    for header in target.headers:
        argv += ["--header", header]
    raw: dict[str, Any] = json.loads(run_pinned(argv, core=LOAD_CORE, timeout=seconds + 90))
    latencies = raw.pop("latencies_ms")
    raw["samples"] = len(latencies)
    raw["p50_ms"] = percentile(latencies, 50) if latencies else None
    raw["p99_ms"] = percentile(latencies, 99) if latencies else None
    raw["p999_ms"] = percentile(latencies, 99.9) if latencies else None
    return raw


def run(
    results: Path,
    *,
    repeats: int,
    seconds: float,
    paced_seconds: float,
    connections: int,
    systems: list[str],
    prev_bin: Path | None,
    portkey_js: Path | None,
    catalogue: dict[str, Any],
) -> dict[str, Any]:
    publisher, name = STREAM_MODEL.split("/", 1)
    upstream = catalogue["configurations"][publisher][name]["configuration"]["model"]
    ours = {"model": STREAM_MODEL, "messages": PROMPT, "stream": False}
    theirs = {"model": upstream, "messages": PROMPT, "stream": False}
    fake = start_fake(results, tokens=TOKENS, interval_ms=0, listed=[upstream])
    direct = Target(
        "direct", "direct (fake upstream)", "/api/v1" + PATH, theirs, (f"Authorization: Bearer {FAKE_API_KEY}",)
    )
    starters: dict[str, tuple[Target, Callable[[], Server]]] = {
        "v1": (
            Target("v1", "modelgate /v1", PATH, ours, ()),
            lambda: start_modelgate(results, fake_url=fake.url, tag="-nonstream"),
        ),
    }
    if prev_bin is not None:
        starters["prev-v1"] = (
            Target("prev-v1", "modelgate-prev /v1", PATH, ours, ()),
            lambda: start_modelgate(results, fake_url=fake.url, tag="-prev-nonstream", bin_dir=prev_bin),
        )
    if portkey_js is not None:
        starters["portkey"] = (
            Target("portkey", "Portkey gateway", PATH, theirs, portkey_headers(fake.url)),
            lambda: start_portkey(results, portkey_js),
        )
    starters["litellm"] = (
        Target("litellm", "LiteLLM proxy", PATH, ours, (f"Authorization: Bearer {LITELLM_MASTER_KEY}",)),
        lambda: start_litellm(results, catalogue, fake.url),
    )
    lua = results / "nonstream.lua"
    out: dict[str, Any] = {"tokens": TOKENS, "connections": connections, "seconds": seconds, "systems": {}}
    try:
        # The fake alone (on the load core, as it is behind every system): what it serves at most.
        runs: list[dict[str, Any]] = []
        for _ in range(repeats):
            with measured(fake.proc) as figures:
                w = wrk_post(
                    fake.url + direct.path,
                    direct.body,
                    direct.headers,
                    seconds=seconds,
                    connections=connections,
                    lua=lua,
                )
            runs.append(
                {
                    "rps": w.rps,
                    "p50_ms": w.p50_ms,
                    "p99_ms": w.p99_ms,
                    "errors": w.errors,
                    "server_cpu": figures.get("cpu"),
                }
            )
        out["systems"]["direct"] = {"label": direct.label, "saturation": runs, "paced": []}
        print(f"  nonstream direct: {statistics.median(r['rps'] for r in runs):,.0f} req/s", flush=True)
        for key in systems:
            if key not in starters:
                continue
            target, starter = starters[key]
            server = starter()
            try:
                url = server.url + target.path
                warm = wrk_post(url, target.body, target.headers, seconds=1, connections=connections, lua=lua)
                sat: list[dict[str, Any]] = []
                for _ in range(repeats):
                    with measured(server.proc) as figures:
                        w = wrk_post(
                            url, target.body, target.headers, seconds=seconds, connections=connections, lua=lua
                        )
                    cpu = figures.get("cpu") or 0.0
                    sat.append(
                        {
                            "rps": w.rps,
                            "p50_ms": w.p50_ms,
                            "p99_ms": w.p99_ms,
                            "errors": w.errors,
                            "server_cpu": cpu,
                            "foreign_cpu": figures.get("foreign"),
                            "rps_per_core": w.rps / cpu if cpu > 0.05 else None,
                            "cpu_ms_per_request": cpu * 1000 / w.rps if w.rps else None,
                        }
                    )
                    print(
                        f"  nonstream {target.label:22} saturation {w.rps:9,.0f} req/s cpu {cpu:.2f} "
                        f"errors {w.errors} (warm-up errors {warm.errors})",
                        flush=True,
                    )
                capacity = statistics.median(r["rps"] for r in sat)
                rate = max(1.0, capacity / 5)
                pairs: list[dict[str, Any]] = []
                for _ in range(max(1, repeats - 1)):
                    with measured(server.proc) as figures:
                        mine = paced(url, target, rate=rate, seconds=paced_seconds)
                    mine["server_cpu"] = figures.get("cpu")
                    ref = paced(fake.url + direct.path, direct, rate=rate, seconds=paced_seconds)
                    pairs.append({"system": mine, "direct": ref})
                    print(
                        f"  nonstream {target.label:22} paced {rate:7.0f}/s "
                        f"p50 {mine['p50_ms']} p99 {mine['p99_ms']} ms "
                        f"(direct {ref['p50_ms']} / {ref['p99_ms']}) errors {mine['errors']}",
                        flush=True,
                    )
                out["systems"][key] = {
                    "label": target.label,
                    "note": server.note,
                    "saturation": sat,
                    "rate": rate,
                    "paced": pairs,
                }
            finally:
                server.proc.stop()
    finally:
        fake.proc.stop()
    return out
