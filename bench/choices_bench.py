"""Measurements behind the choices of issue 6 §2: ASGI server, HTTP client, and where the server's time goes.

- ``servers``: modelgate under uvicorn (httptools + uvloop) and under granian, same app, same run:
  ``GET /models`` (plain and gzip) and streaming through ``/api/ai`` at a few concurrency levels.
- ``clients``: the cost of reading token streams with a raw asyncio client, aiohttp and httpx — the same
  choice modelgate faces for its upstream client. Each client runs on the server core (alone there), the
  fake on the load core; the figure that matters is client CPU per 1,000 tokens.
- ``profile``: py-spy samples modelgate while it relays streams; the report lists the functions with the most
  samples (self and inclusive), and the raw collapsed stacks are kept for a flame graph.
"""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, SERVER_CORE, measured, pinned, settle
from models_bench import wrk
from report import spread
from stream_bench import loadgen, routes, summarize
from systems import STREAM_MODEL, VENV_BIN, Server, start_fake, start_modelgate


def _upstream(catalogue: dict[str, Any]) -> str:
    publisher, name = STREAM_MODEL.split("/", 1)
    model: str = catalogue["configurations"][publisher][name]["configuration"]["model"]
    return model


def servers(
    results: Path,
    *,
    repeats: int,
    seconds: float,
    stream_seconds: float,
    levels: list[int],
    tokens: int,
    interval_ms: float,
    catalogue: dict[str, Any],
) -> dict[str, Any]:
    route = routes(_upstream(catalogue))["api"]
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=[_upstream(catalogue)])
    started: dict[str, Server] = {}
    out: dict[str, Any] = {"levels": levels, "models": {}, "stream": {}}
    try:
        for variant in ("uvicorn", "granian"):
            started[variant] = start_modelgate(results, server=variant, fake_url=fake.url, tag="-choice")
            out["models"][variant] = {"plain": [], "gzip": []}
            out["stream"][variant] = {str(level): [] for level in levels}
            wrk(f"{started[variant].url}/models", gzip_client=False, seconds=1, connections=64)
            loadgen(started[variant].url, route, concurrency=10, seconds=2, warmup=0.5, tokens=tokens)
        for repeat in range(repeats):
            for variant, server in started.items():
                for client in ("plain", "gzip"):
                    run = wrk(f"{server.url}/models", gzip_client=client == "gzip", seconds=seconds, connections=64)
                    out["models"][variant][client].append(run.__dict__)
                    print(
                        f"  servers r{repeat + 1} {variant:8} /models {client:5} {run.rps:8.0f} req/s "
                        f"p99 {run.p99_ms:.2f} ms",
                        flush=True,
                    )
                for level in levels:
                    settle(server.proc)
                    with measured(server.proc) as figures:
                        raw = loadgen(
                            server.url, route, concurrency=level, seconds=stream_seconds, warmup=1, tokens=tokens
                        )
                    summary = summarize(raw, figures, {})
                    out["stream"][variant][str(level)].append(summary)
                    print(
                        f"  servers r{repeat + 1} {variant:8} {level:4} streams {summary['tokens_per_s']:8.0f} "
                        f"tok/s TTFT p50 {summary['ttft_p50_ms']:.2f} ms errors {summary['errors']}",
                        flush=True,
                    )
        out["notes"] = {variant: server.note for variant, server in started.items()}
    finally:
        for server in started.values():
            server.proc.stop()
        fake.proc.stop()
    return out


def servers_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## ASGI server: uvicorn vs granian (modelgate, same app)",
        "",
        "| server | `/models` plain req/s | p99 ms | `/models` gzip req/s | p99 ms |"
        + "".join(f" {lv} streams tok/s | TTFT p50 ms |" for lv in data["levels"]),
        "|---|---:|---:|---:|---:|" + "---:|---:|" * len(data["levels"]),
    ]
    for variant, models in data["models"].items():
        cells = [
            spread((r["rps"] for r in models["plain"]), 0),
            spread((r["p99_ms"] for r in models["plain"]), 2),
            spread((r["rps"] for r in models["gzip"]), 0),
            spread((r["p99_ms"] for r in models["gzip"]), 2),
        ]
        for level in data["levels"]:
            runs = data["stream"][variant][str(level)]
            cells += [spread((r["tokens_per_s"] for r in runs), 0), spread((r["ttft_p50_ms"] for r in runs), 2)]
        lines.append(f"| {data['notes'].get(variant, variant)} | " + " | ".join(cells) + " |")
    return lines


def clients(
    results: Path,
    *,
    repeats: int,
    seconds: float,
    levels: list[int],
    tokens: int,
    interval_ms: float,
    catalogue: dict[str, Any],
) -> dict[str, Any]:
    route = routes(_upstream(catalogue))["direct"]
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=[])
    out: dict[str, Any] = {"levels": levels, "clients": {}}
    try:
        for repeat in range(repeats):
            for client in ("raw", "aiohttp", "httpx", "httpx2"):
                for level in levels:
                    raw = loadgen(
                        fake.url,
                        route,
                        concurrency=level,
                        seconds=seconds,
                        warmup=1,
                        tokens=tokens,
                        core=SERVER_CORE,
                        client=client,
                    )
                    run = {
                        "tokens_per_s": raw["tokens_per_s"],
                        "cpu_per_1k_tokens_ms": raw["loadgen_cpu_s"] * 1e6 / max(1, raw["tokens"]),
                        "client_cpu": raw["loadgen_cpu_s"] / raw["wall_s"],
                        "errors": raw["errors"],
                        "ttft_p50_ms": summarize(raw, {}, {})["ttft_p50_ms"],
                    }
                    out["clients"].setdefault(client, {}).setdefault(str(level), []).append(run)
                    print(
                        f"  clients r{repeat + 1} {client:8} {level:4} streams {run['tokens_per_s']:8.0f} tok/s "
                        f"{run['cpu_per_1k_tokens_ms']:.1f} ms CPU/1k tokens",
                        flush=True,
                    )
    finally:
        fake.proc.stop()
    return out


def clients_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## HTTP client reading token streams: raw asyncio vs aiohttp vs httpx vs httpx2",
        "",
        "Each client alone on core 0 reading the fake (core 1) directly. CPU per 1,000 tokens is what a gateway "
        "pays for its upstream client; client CPU near 1.00 means the client, not the fake, was the limit.",
        "",
        "| client | streams | tokens/s | client CPU (cores) | CPU ms per 1k tokens | TTFT p50 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for client, levels in data["clients"].items():
        for level, runs in levels.items():
            lines.append(
                f"| {client} | {level} | {spread((r['tokens_per_s'] for r in runs), 0)} | "
                f"{spread((r['client_cpu'] for r in runs), 2)} | "
                f"{spread((r['cpu_per_1k_tokens_ms'] for r in runs), 1)} | "
                f"{spread((r['ttft_p50_ms'] for r in runs), 2)} | {sum(r['errors'] for r in runs)} |"
            )
    return lines


def profile(
    results: Path,
    *,
    route_key: str,
    streams: int,
    seconds: float,
    tokens: int,
    interval_ms: float,
    server: str,
    catalogue: dict[str, Any],
) -> dict[str, Any]:
    """py-spy on modelgate under load: ``route_key`` api|v1 (``streams`` streams) or models (wrk, 64 connections)."""
    route = routes(_upstream(catalogue))[route_key] if route_key != "models" else None
    fake = start_fake(results, tokens=tokens, interval_ms=interval_ms, listed=[_upstream(catalogue)])
    target = None
    raw_path = results / f"profile-{route_key}.txt"
    try:
        target = start_modelgate(results, server=server, fake_url=fake.url, tag="-profile")
        if route is None:
            wrk(f"{target.url}/models", gzip_client=False, seconds=1, connections=64)
        else:
            loadgen(target.url, route, concurrency=10, seconds=2, warmup=0.5, tokens=tokens)
        spy = subprocess.Popen(
            pinned(
                LOAD_CORE,
                [
                    str(VENV_BIN / "py-spy"),
                    "record",
                    "--pid",
                    str(target.proc.pid),
                    "--rate",
                    "250",
                    "--duration",
                    str(int(seconds)),
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                    "--nonblocking",
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        with measured(target.proc) as figures:
            if route is None:
                models_run = wrk(f"{target.url}/models", gzip_client=False, seconds=seconds, connections=64)
                summary: dict[str, Any] = {
                    "rps": models_run.rps,
                    "p99_ms": models_run.p99_ms,
                    "errors": models_run.errors,
                }
            else:
                raw = loadgen(target.url, route, concurrency=streams, seconds=seconds, warmup=1, tokens=tokens)
        if route is not None:
            summary = summarize(raw, figures, {})
        summary["server_cpu"] = figures.get("cpu")
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err[-1000:]}")
    finally:
        if target is not None:
            target.proc.stop()
        fake.proc.stop()
    return {
        "route": route.path if route is not None else "GET /models",
        "streams": streams if route is not None else None,
        "seconds": seconds,
        "raw_file": raw_path.name,
        "summary": summary,
        "top": top_functions(raw_path),
    }


#: Frames that sit under every sample (process start-up, the CLI, the event loop runner): not worth listing.
_OUTER_FILES = frozenset({"core.py", "main.py", "runners.py", "_compat.py", "cli.py", "server.py", "modelgate"})


def _frame_name(frame: str) -> tuple[str, str]:
    """py-spy's ``function (path/to/file.py:line)`` → (``function (file.py)``, ``path/to/file.py``)."""
    if " (" not in frame:
        return frame, ""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    return f"{function} ({path.rsplit('/', 1)[-1]})", path


def _package(path: str) -> str:
    """py-spy's module-relative path → its package (``uvicorn``, ``asyncio``), or the module for modelgate's own."""
    if path.startswith("modelgate/"):
        return path
    return path.split("/", 1)[0] if "/" in path else path or "?"


def top_functions(raw_path: Path, limit: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive share of samples per function, and self share per package, from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1][0]] += count
        by_package[_package(frames[-1][1])] += count
        for name in {name for name, path in frames if path.rsplit("/", 1)[-1] not in _OUTER_FILES}:
            inclusive[name] += count
    total = max(total, 1)
    return {
        "self": [(name, n / total) for name, n in own.most_common(limit)],
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(limit)],
        "packages": [(name, n / total) for name, n in by_package.most_common(12)],
        "samples": [("all", float(total))],
    }


def profile_section(data: dict[str, Any]) -> list[str]:
    summary = data["summary"]
    if data["streams"] is None:
        load = "wrk, 64 connections"
        figures = f"{summary['rps']:,.0f} req/s, p99 {summary['p99_ms']:.2f} ms"
    else:
        load = f"{data['streams']} streams"
        figures = f"{summary['tokens_per_s']:,.0f} tokens/s, TTFT p50 {summary['ttft_p50_ms'] or 0:.1f} ms"
    lines = [
        f"## Profile: modelgate `{data['route']}`, {load} ({data['seconds']:g} s, py-spy)",
        "",
        f"{figures}, server CPU {summary['server_cpu'] or 0:.2f} cores, errors {summary['errors']}; "
        f"{data['top']['samples'][0][1]:,.0f} samples; collapsed stacks in `{data['raw_file']}`.",
        "",
        "| self % | function (file) | | inclusive % | function (file) |",
        "|---:|---|---|---:|---|",
    ]
    for (own, own_share), (inc, inc_share) in zip(data["top"]["self"], data["top"]["inclusive"], strict=False):
        lines.append(f"| {own_share:.1%} | `{own}` | | {inc_share:.1%} | `{inc}` |")
    lines += ["", "Self samples by package or modelgate module:", "", "| self % | where |", "|---:|---|"]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in data["top"].get("packages", [])]
    return lines


def micro(catalogue_body: bytes) -> dict[str, Any]:
    """Per-operation costs on the hot paths: parsing one upstream chunk, encoding one output part (json vs orjson),
    gzip of the /models body per request (what nginx's gzip does) vs once at load, and redacting the largest
    upstream error body we read, plain and made to be slow (64 KB of ``mg-``: seconds before the bounded
    look-ahead, tests/test_provider_http.py)."""
    import gzip
    import json
    import timeit

    import orjson

    from fake_upstream import Script

    chunk = Script("meta-llama/llama-3.3-70b-instruct:free", 2).chunks[1].split(b"data: ", 1)[1].split(b"\n\n")[0]
    part = {"type": "text-delta", "id": "0", "delta": " ~lorem"}

    def per_call_us(stmt: Any, number: int = 20000) -> float:
        return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6

    rows = {
        "parse one OpenRouter chunk: json.loads": per_call_us(lambda: json.loads(chunk)),
        "parse one OpenRouter chunk: orjson.loads": per_call_us(lambda: orjson.loads(chunk)),
        "encode one text part: json.dumps": per_call_us(lambda: json.dumps(part, separators=(",", ":")).encode()),
        "encode one text part: orjson.dumps": per_call_us(lambda: orjson.dumps(part)),
        "encode one text value (data stream `0:`): json.dumps": per_call_us(lambda: json.dumps(" ~lorem").encode()),
        "encode one text value (data stream `0:`): orjson.dumps": per_call_us(lambda: orjson.dumps(" ~lorem")),
    }
    from modelgate.providers._http import MAX_ERROR_BODY
    from modelgate.redact import Redactor

    redactor = Redactor(["sk-or-v1-" + "0" * 64])
    for name, text in (("plain", "x " * (MAX_ERROR_BODY // 2)), ("mg-mg-mg-…", "mg-" * (MAX_ERROR_BODY // 3))):
        rows[f"redact a {MAX_ERROR_BODY // 1024} KB upstream error body, {name}"] = per_call_us(
            lambda text=text: redactor.scrub(text), number=5
        )
    sizes = {}
    for level in (1, 6, 9):
        rows[f"gzip the /models body, level {level}"] = per_call_us(
            lambda level=level: gzip.compress(catalogue_body, compresslevel=level), number=500
        )
        sizes[level] = len(gzip.compress(catalogue_body, compresslevel=level))
    return {"us": rows, "gzip_sizes": sizes, "body_bytes": len(catalogue_body)}


def micro_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Per-operation costs (one core, best of 5)",
        "",
        "| operation | µs per call |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {us:.2f} |" for name, us in data["us"].items()]
    sizes = ", ".join(f"level {level}: {size:,} B" for level, size in data["gzip_sizes"].items())
    lines += ["", f"/models body {data['body_bytes']:,} B; gzipped {sizes}."]
    return lines
