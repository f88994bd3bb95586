"""Streaming chat: TTFT, tokens/s, errors, server CPU and peak RSS at 1..500 concurrent streams.

One fake upstream (load core) sends every stream 200 tokens 5 ms apart. The same load generator (load core)
reads it directly, through modelgate's ``/api/ai/openrouter/{name}/chat`` (AI SDK data stream) and
``/v1/chat/completions`` (OpenAI SSE), and through LiteLLM proxy's ``/v1/chat/completions``. Each system
under test gets a fresh process on the server core, so its peak RSS is its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, Proc, measured, run_pinned, settle
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

PROMPT = [{"role": "user", "content": "Tell me a story."}]


@dataclass(frozen=True)
class Route:
    system: str  # the label in tables and plots
    path: str
    body: dict[str, Any]
    fmt: str  # "data" | "sse" (what the loadgen checks the stream's end against)
    headers: tuple[str, ...] = ()


def routes(upstream_model: str) -> dict[str, Route]:
    publisher, name = STREAM_MODEL.split("/", 1)
    openai_body = {"model": STREAM_MODEL, "messages": PROMPT, "stream": True}
    return {
        "direct": Route(
            "direct (fake upstream)",
            "/api/v1/chat/completions",
            {"model": upstream_model, "messages": PROMPT, "stream": True, "max_tokens": 2048},
            "sse",
            (f"Authorization: Bearer {FAKE_API_KEY}",),
        ),
        "api": Route("modelgate /api/ai", f"/api/ai/{publisher}/{name}/chat", {"messages": PROMPT}, "data"),
        "v1": Route("modelgate /v1", "/v1/chat/completions", openai_body, "sse"),
        "prev-api": Route("modelgate-prev /api/ai", f"/api/ai/{publisher}/{name}/chat", {"messages": PROMPT}, "data"),
        "prev-v1": Route("modelgate-prev /v1", "/v1/chat/completions", openai_body, "sse"),
        "portkey": Route(
            "Portkey gateway",
            "/v1/chat/completions",
            {"model": upstream_model, "messages": PROMPT, "stream": True},
            "sse",
            (),  # portkey_headers(fake url), added once the fake runs
        ),
        "litellm": Route(
            "LiteLLM proxy",
            "/v1/chat/completions",
            openai_body,
            "sse",
            (f"Authorization: Bearer {LITELLM_MASTER_KEY}",),
        ),
    }


def loadgen(
    base_url: str,
    route: Route,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    tokens: int,
    core: int | str = LOAD_CORE,
    client: str = "raw",
) -> dict[str, Any]:
    argv = [str(VENV_BIN / "python"), str(BENCH / "loadgen.py"), "--url", base_url + route.path]
    argv += ["--body", json.dumps(route.body), "--format", route.fmt, "--concurrency", str(concurrency)]
    argv += ["--seconds", str(seconds), "--warmup", str(warmup), "--expect-tokens", str(tokens), "--client", client]
    for header in route.headers:
        argv += ["--header", header]
    result: dict[str, Any] = json.loads(run_pinned(argv, core=core, timeout=seconds + 120))
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(raw: dict[str, Any], server: dict[str, float], fake: dict[str, float]) -> dict[str, Any]:
    """One run's figures; censored waits (no first token by the end) count as lower bounds in the TTFT tail."""
    waits = raw["ttft_s"] + raw["censored_s"]
    cpu_s = server.get("cpu_s")
    return {
        "tokens_per_s": raw["tokens_per_s"],
        "ttft_p50_ms": percentile(waits, 50) * 1000 if waits else None,
        "ttft_p99_ms": percentile(waits, 99) * 1000 if waits else None,
        "censored": len(raw["censored_s"]),
        "streams": raw["started"],
        "ok": raw["ok"],
        "errors": raw["errors"],
        "error_samples": raw["error_samples"],
        "cut": raw["cut"],
        "server_cpu": server.get("cpu"),
        # CPU of the server's process tree over the window ÷ every token delivered in it (warm-up included).
        "cpu_ms_per_1k_tokens": cpu_s * 1e6 / raw["tokens"] if cpu_s is not None and raw["tokens"] else None,
        "foreign_cpu": server.get("foreign"),
        "peak_rss_mb": server["peak_rss"] / 2**20 if "peak_rss" in server else None,
        "fake_cpu": fake.get("cpu"),
        "loadgen_cpu": raw["loadgen_cpu_s"] / raw["wall_s"],
    }


def measure_levels(
    server: Proc | None,
    fake: Server,
    base_url: str,
    route: Route,
    *,
    levels: list[int],
    repeats: int,
    seconds: float,
    warmup: float,
    tokens: int,
) -> list[dict[str, Any]]:
    runs = []
    for level in levels:
        for repeat in range(repeats):
            drained = settle(server)
            with measured(server) as figures, measured(fake.proc) as fake_figures:
                raw = loadgen(base_url, route, concurrency=level, seconds=seconds, warmup=warmup, tokens=tokens)
            run = {"level": level, "repeat": repeat, "drain_s": drained, **summarize(raw, figures, fake_figures)}
            runs.append(run)
            p50 = run["ttft_p50_ms"]
            print(
                f"  stream {route.system:24} {level:4} streams r{repeat + 1}: {run['tokens_per_s']:8.0f} tok/s "
                f"TTFT p50 {p50 if p50 is None else round(p50, 2)} ms  errors {run['errors']} "
                f"cpu {run['server_cpu'] or 0:.2f} ({run['cpu_ms_per_1k_tokens'] or 0:.0f} ms/1k tok) "
                f"rss {run['peak_rss_mb'] or 0:.0f} MB "
                f"(waited {drained:.1f} s for the previous run's backlog)",
                flush=True,
            )
    return runs


#: Systems that skip the highest levels (their saturation is known well below them, and each such run costs
#: tens of seconds of draining abandoned streams): key → the highest level run.
LEVEL_CAPS = {"litellm": 500, "portkey": 500}


def run(
    results: Path,
    *,
    levels: list[int],
    repeats: int,
    seconds: float,
    warmup: float,
    tokens: int,
    interval_ms: float,
    systems: list[str],
    server: str,
    catalogue: dict[str, Any],
    prev_bin: Path | None = None,
    portkey_js: Path | None = None,
    level_caps: dict[str, int] | None = None,
) -> dict[str, Any]:
    publisher, name = STREAM_MODEL.split("/", 1)
    upstream = catalogue["configurations"][publisher][name]["configuration"]["model"]
    # What the fake's GET /models lists: the OpenRouter models of the catalogue (for modelgate's free probes).
    listed = [
        entry["configuration"]["model"]
        for models in catalogue["configurations"].values()
        for model_name, entry in models.items()
        if f"/api/ai/openrouter/{model_name}/chat" in catalogue["endpoints"]["openrouter"]
    ]
    table = routes(upstream)
    caps = LEVEL_CAPS if level_caps is None else level_caps
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=listed)
    table["portkey"] = replace(table["portkey"], headers=portkey_headers(fake.url))
    out: dict[str, Any] = {"levels": levels, "tokens": tokens, "interval_ms": interval_ms, "systems": {}}
    try:
        for key in systems:
            route = table[key]
            target: Server | None = None
            try:
                if key == "direct":
                    base_url, proc, note = fake.url, None, "the fake read directly (no server in between)"
                else:
                    if key == "litellm":
                        target = start_litellm(results, catalogue, fake.url)
                    elif key == "portkey":
                        if portkey_js is None:
                            continue
                        target = start_portkey(results, portkey_js)
                    elif key.startswith("prev-"):
                        if prev_bin is None:
                            continue
                        target = start_modelgate(results, fake_url=fake.url, tag=f"-{key}", bin_dir=prev_bin)
                    else:
                        target = start_modelgate(results, server=server, fake_url=fake.url, tag=f"-{key}")
                    base_url, proc, note = target.url, target.proc, target.note
                # warm-up: connection pools, imports on first use, allocator arenas
                loadgen(base_url, route, concurrency=10, seconds=2, warmup=0.5, tokens=tokens)
                runs = measure_levels(
                    proc,
                    fake,
                    base_url,
                    route,
                    levels=[level for level in levels if level <= caps.get(key, level)],
                    repeats=repeats,
                    seconds=seconds,
                    warmup=warmup,
                    tokens=tokens,
                )
                out["systems"][key] = {"label": route.system, "note": note, "path": route.path, "runs": runs}
            finally:
                if target is not None:
                    target.proc.stop()
    finally:
        fake.proc.stop()
    return out
