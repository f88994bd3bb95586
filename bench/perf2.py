"""``run.py perf2``: issue 13's whole table in one run, every target beside its same-run baseline.

Parts, in order: ``GET /models`` (modelgate, modelgate-prev, nginx static and per-request gzip), streaming
(direct, modelgate ``/api/ai`` and ``/v1``, the same of modelgate-prev, LiteLLM, Portkey at 1..1,000 streams),
non-streamed ``/v1/chat/completions`` (saturation and paced added latency), ``--workers 2`` vs 1, start-up.
*modelgate-prev* is the tree at ``--baseline-ref`` in its own venv (``installs.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import models_bench
import nonstream_bench
import startup_bench
import stream_bench
import workers_bench
from report import median, spread, verdict
from systems import VENV_BIN

PERF2_LEVELS = "1,100,200,500,1000"
PERF2_SYSTEMS = "direct,api,v1,prev-api,prev-v1,litellm,portkey"


def run(
    args: Any, results: Path, catalogue: dict[str, Any], prev_bin: Path | None, portkey_js: Path | None
) -> dict[str, Any]:
    data: dict[str, Any] = {"baseline_ref": args.baseline_ref}
    print("bench perf2: GET /models", flush=True)
    data["models"] = models_bench.run(
        results,
        repeats=args.repeats,
        seconds=args.seconds,
        connections=args.connections,
        litellm=False,
        server=args.server,
        naive=False,
        prev_bin=prev_bin,
    )
    print("bench perf2: streaming", flush=True)
    data["stream"] = stream_bench.run(
        results,
        levels=args.levels,
        repeats=args.stream_repeats,
        seconds=args.stream_seconds,
        warmup=args.warmup,
        tokens=args.tokens,
        interval_ms=args.interval_ms,
        systems=args.systems,
        server=args.server,
        catalogue=catalogue,
        prev_bin=prev_bin,
        portkey_js=portkey_js,
    )
    print("bench perf2: non-streamed /v1/chat/completions", flush=True)
    data["nonstream"] = nonstream_bench.run(
        results,
        repeats=args.repeats,
        seconds=args.seconds,
        paced_seconds=args.paced_seconds,
        connections=args.connections,
        systems=[s for s in ("v1", "prev-v1", "portkey", "litellm") if s in args.nonstream_systems],
        prev_bin=prev_bin,
        portkey_js=portkey_js,
        catalogue=catalogue,
    )
    print("bench perf2: --workers", flush=True)
    data["workers"] = workers_bench.run(
        results,
        repeats=args.repeats,
        seconds=args.seconds,
        stream_seconds=args.stream_seconds,
        warmup=args.warmup,
        streams=200 if 200 in args.levels or not args.quick else max(args.levels),
        connections=args.connections,
        tokens=args.tokens,
        interval_ms=args.interval_ms,
        catalogue=catalogue,
    )
    print("bench perf2: start-up", flush=True)
    systems = {"modelgate": VENV_BIN}
    if prev_bin is not None:
        systems["modelgate-prev"] = prev_bin
    data["startup"] = startup_bench.run(results, systems=systems, repeats=args.startup_repeats)
    return data


# --- report ----------------------------------------------------------------------------------------------


def _med(values: Iterable[float | None]) -> float | None:
    return median(values)


def _fig(data: dict[str, Any], key: str, level: int, field: str) -> float | None:
    system = data["stream"]["systems"].get(key)
    if system is None:
        return None
    return _med(r.get(field) for r in system["runs"] if r["level"] == level)


def _errors(data: dict[str, Any], key: str, level: int) -> float | None:
    system = data["stream"]["systems"].get(key)
    runs = [r for r in system["runs"] if r["level"] == level] if system else []
    return float(sum(r["errors"] for r in runs)) if runs else None


def _peak(data: dict[str, Any], key: str, level: int) -> float | None:
    system = data["stream"]["systems"].get(key)
    peaks = [r["peak_rss_mb"] for r in system["runs"] if r["level"] == level and r["peak_rss_mb"]] if system else []
    return max(peaks) if peaks else None


def _row(name: str, value: float | None, fmt: str, ok: Callable[[float], bool], baseline: str = "") -> str:
    if value is None:
        return f"| {name} | not measured | — | {baseline} |"
    return f"| {name} | {fmt.format(value)} | {verdict(ok(value))} | {baseline} |"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def targets(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Issue 13 targets",
        "",
        "Every figure is a same-run ratio or difference; *baseline* gives what it was compared with.",
        "",
        "| target | figure | verdict | baseline (same run) |",
        "|---|---|---|---|",
    ]
    # 1. relay cost
    for key, prev, label in (("api", "prev-api", "/api/ai"), ("v1", "prev-v1", "/v1")):
        mine, theirs = _fig(data, key, 200, "cpu_ms_per_1k_tokens"), _fig(data, prev, 200, "cpu_ms_per_1k_tokens")
        lines.append(
            _row(
                f"1. {label}: server CPU per 1,000 tokens at 200 streams ≤ 1/3 of the previous release",
                _div(mine, theirs),
                "{:.2f} of prev",
                lambda v: v <= 1 / 3,
                f"{_fmt(mine, '{:.1f}')} vs {_fmt(theirs, '{:.1f}')} CPU ms / 1k tokens",
            )
        )
    # 2. TTFT under load, 1,000 streams
    for key, label in (("api", "/api/ai"), ("v1", "/v1")):
        for level, limit in ((200, 10.0), (500, 50.0)):
            mine, direct = _fig(data, key, level, "ttft_p50_ms"), _fig(data, "direct", level, "ttft_p50_ms")
            lines.append(
                _row(
                    f"2. {label}: TTFT p50 at {level} streams within {limit:g} ms of direct",
                    _sub(mine, direct),
                    "{:+.1f} ms",
                    lambda v, limit=limit: v <= limit,  # type: ignore[misc]
                    f"{_fmt(mine, '{:.1f}')} ms vs direct {_fmt(direct, '{:.1f}')} ms",
                )
            )
        tps, direct_tps = _fig(data, key, 1000, "tokens_per_s"), _fig(data, "direct", 1000, "tokens_per_s")
        lines.append(
            _row(f"2. {label}: 1,000 streams, zero errors", _errors(data, key, 1000), "{:.0f}", lambda v: v == 0)
        )
        lines.append(
            _row(
                f"2. {label}: 1,000 streams, tokens/s ≥ 90% of direct",
                _div(tps, direct_tps),
                "{:.0%}",
                lambda v: v >= 0.9,
                f"{_fmt(tps, '{:,.0f}')} vs direct {_fmt(direct_tps, '{:,.0f}')} tokens/s",
            )
        )
        lines.append(
            _row(
                f"2. {label}: 1,000 streams, peak RSS < 200 MB", _peak(data, key, 1000), "{:.0f} MB", lambda v: v < 200
            )
        )
    # 3. non-streamed
    ns = data.get("nonstream", {}).get("systems", {})

    def per_core(key: str) -> float | None:
        return _med(r.get("rps_per_core") for r in ns.get(key, {}).get("saturation", []))

    mine_pc, prev_pc = per_core("v1"), per_core("prev-v1")
    lines.append(
        _row(
            "3. non-streamed /v1: req/s per core at saturation ≥ 5x the previous release",
            _div(mine_pc, prev_pc),
            "{:.1f}x",
            lambda v: v >= 5,
            f"{_fmt(mine_pc, '{:,.0f}')} vs {_fmt(prev_pc, '{:,.0f}')} req/s per core",
        )
    )
    pairs = ns.get("v1", {}).get("paced", [])
    for pct, limit in (("p50", 0.5), ("p99", 2.0)):
        added = _med(
            _sub(p["system"][f"{pct}_ms"], p["direct"][f"{pct}_ms"]) for p in pairs if p["system"][f"{pct}_ms"]
        )
        rate = ns.get("v1", {}).get("rate")
        lines.append(
            _row(
                f"3. non-streamed /v1: added latency {pct} ≤ {limit:g} ms at a fifth of capacity (open loop)",
                added,
                "{:+.2f} ms",
                lambda v, limit=limit: v <= limit,  # type: ignore[misc]
                f"at {_fmt(rate, '{:,.0f}')} req/s, minus the fake read directly at the same rate",
            )
        )
    # 4. workers
    wk = data.get("workers")
    if wk:
        models_ratio = workers_bench.ratio(wk, "2 workers", "1 worker", "models", "rps")
        lines.append(
            _row(
                "4. --workers 2 vs 1: GET /models req/s ≥ 1.8x", models_ratio, "{:.2f}x", lambda v: v >= 1.8, "1 worker"
            )
        )
        stream_ratio = workers_bench.ratio(wk, "2 workers", "1 worker", "stream", "tokens_per_s")
        lines.append(
            _row(
                f"4. --workers 2 vs 1: {wk['streams']} streams tokens/s ≥ 1.8x",
                stream_ratio,
                "{:.2f}x",
                lambda v: v >= 1.8,
                "1 worker (tokens/s is capped by the offered load: see the workers table)",
            )
        )
    # 5. start-up
    su = data.get("startup", {}).get("systems", {})
    for name, limit in (("--help", 0.3), ("models", 0.3), ("serve", 1.0)):
        mine = su.get("modelgate", {}).get(name)
        prev = su.get("modelgate-prev", {}).get(name)
        what = "`modelgate serve` exec → /ready 200" if name == "serve" else f"`modelgate {name}` wall time"
        lines.append(
            _row(
                f"5. {what} ≤ {limit:g} s",
                statistics.median(mine) if mine else None,
                "{:.3f} s",
                lambda v, limit=limit: v <= limit,  # type: ignore[misc]
                f"previous release {_fmt(statistics.median(prev) if prev else None, '{:.3f}')} s",
            )
        )
    # 6. peers and /models
    cases = {(c["system"], c["client"]): c["runs"] for c in data.get("models", {}).get("cases", [])}

    def rps(system: str, client: str) -> float | None:
        return _med(r["rps"] for r in cases.get((system, client), []))

    plain = _div(rps("modelgate", "plain"), rps("nginx static file", "plain"))
    gz = _div(rps("modelgate", "gzip"), rps("nginx per-request gzip", "gzip"))
    lines.append(_row("6. GET /models ≥ 45% of nginx static", plain, "{:.0%}", lambda v: v >= 0.45, "nginx static"))
    lines.append(
        _row("6. GET /models (gzip) > 1.5x nginx per-request gzip", gz, "{:.2f}x", lambda v: v > 1.5, "nginx gzip")
    )
    present = sorted(s["label"] for s in data["stream"]["systems"].values())
    lines.append(f"| 6. peers in the streaming table | {', '.join(present)} | — | |")
    return lines


def nonstream_section(data: dict[str, Any]) -> list[str]:
    ns = data["nonstream"]
    lines = [
        "## Non-streamed `/v1/chat/completions`",
        "",
        f"`stream: false`, a {ns['tokens']}-token reply the fake sends at once. *Saturation*: wrk, 1 thread on core 1, "
        f"{ns['connections']} connections, {ns['seconds']:g} s per repeat; *req/s per core* = req/s ÷ server CPU "
        "(cores). *Paced*: open loop at a fifth of that system's saturation req/s (`paced.py`: sends at fixed "
        "times, latency from the scheduled time), then the fake directly at the same rate; *added* = system minus "
        "direct, per repeat, median of repeats.",
        "",
        "| system | req/s | req/s per core | server CPU | CPU ms / request | wrk p99 ms | paced rate | "
        "latency p50 / p99 ms | direct p50 / p99 ms | added p50 / p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for key, system in ns["systems"].items():
        sat = system["saturation"]
        pairs = system.get("paced", [])
        if key == "direct":
            lines.append(
                f"| {system['label']} | {spread((r['rps'] for r in sat), 0)} | — | "
                f"{spread((r.get('server_cpu') for r in sat), 2)} (fake) | — | {spread((r['p99_ms'] for r in sat), 2)} "
                "| — | — | — | — | " + str(sum(r["errors"] for r in sat)) + " |"
            )
            continue
        mine50 = spread(p["system"]["p50_ms"] for p in pairs)
        mine99 = spread(p["system"]["p99_ms"] for p in pairs)
        ref50 = spread(p["direct"]["p50_ms"] for p in pairs)
        ref99 = spread(p["direct"]["p99_ms"] for p in pairs)
        add50 = spread(_sub(p["system"]["p50_ms"], p["direct"]["p50_ms"]) for p in pairs)
        add99 = spread(_sub(p["system"]["p99_ms"], p["direct"]["p99_ms"]) for p in pairs)
        errors = sum(r["errors"] for r in sat) + sum(p["system"]["errors"] for p in pairs)
        lines.append(
            f"| {system['label']} | {spread((r['rps'] for r in sat), 0)} | "
            f"{spread((r.get('rps_per_core') for r in sat), 0)} | {spread((r['server_cpu'] for r in sat), 2)} | "
            f"{spread((r.get('cpu_ms_per_request') for r in sat), 3)} | {spread((r['p99_ms'] for r in sat), 2)} | "
            f"{system['rate']:,.0f}/s | {mine50} / {mine99} | {ref50} / {ref99} | {add50} / {add99} | {errors} |"
        )
    late = [
        f"{s['label']}: {p['system']['generator_late_max_ms']:.1f} ms"
        for s in ns["systems"].values()
        for p in s.get("paced", [])
        if p["system"]["generator_late_max_ms"] > 5
    ]
    if late:
        lines += ["", "The paced generator itself sent late by more than 5 ms at some point in: " + "; ".join(late)]
    samples = {
        s["label"]: r["error_samples"]
        for s in ns["systems"].values()
        for r in (p["system"] for p in s.get("paced", []))
        if r.get("error_samples")
    }
    for label, errors_ in samples.items():
        lines.append(f"- {label}: {errors_}")
    lines += [f"- {s['label']}: {s['note']}" for s in ns["systems"].values() if s.get("note")]
    return lines


def workers_section(data: dict[str, Any]) -> list[str]:
    wk = data["workers"]
    lines = [
        "## `serve --workers`",
        "",
        "Two cores and no separate core set for the load: every worker, wrk (2 threads, "
        f"{wk['connections']} connections) or the load generator ({wk['streams']} streams, route `/api/ai`) and the "
        "fake all run on cores 0-1. *server CPU* = all workers, in cores; *load CPU* = load generator + fake "
        "(streams only). Tokens/s cannot exceed the offered load (streams x 1 token per interval).",
        "",
        "| variant | /models req/s | p99 ms | server CPU | streams tokens/s | TTFT p50 ms | TTFT p99 ms | "
        "server CPU | load CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, v in wk["variants"].items():
        m, s = v["models"], v["stream"]
        lines.append(
            f"| {label} | {spread((r['rps'] for r in m), 0)} | {spread((r['p99_ms'] for r in m), 2)} | "
            f"{spread((r.get('cpu') for r in m), 2)} | {spread((r['tokens_per_s'] for r in s), 0)} | "
            f"{spread((r['ttft_p50_ms'] for r in s), 1)} | {spread((r['ttft_p99_ms'] for r in s), 1)} | "
            f"{spread((r['server_cpu'] for r in s), 2)} | "
            f"{spread(((r['fake_cpu'] or 0) + r['loadgen_cpu'] for r in s), 2)} | "
            f"{sum(r['errors'] for r in s) + sum(r['errors'] for r in m)} |"
        )
    lines += ["", *(f"- {label}: {v['note']}" for label, v in wk["variants"].items())]
    return lines


def startup_section(data: dict[str, Any]) -> list[str]:
    su = data["startup"]
    lines = [
        "## Start-up",
        "",
        f"Wall time, {su['repeats']} runs each (serve: half as many, at least 3), console script of each venv, "
        "page cache warm; `--help` and `models` pinned to core 0, `serve` on both cores (its default starts a "
        "worker per core in this tree; the previous release's default is 1 worker). Median (range), seconds.",
        "",
        "| system | `modelgate --help` | `modelgate models` | `modelgate serve` exec → `/ready` 200 "
        "| `serve --workers 1` exec → `/ready` 200 |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, f in su["systems"].items():
        one = spread(f["serve --workers 1"], 3) if "serve --workers 1" in f else "—"
        lines.append(
            f"| {label} | {spread(f['--help'], 3)} | {spread(f['models'], 3)} | {spread(f['serve'], 3)} | {one} |"
        )
    for label, f in su["systems"].items():
        for module, rows in f["importtime"].items():
            top = ", ".join(f"{name} {ms:.0f}" for name, ms in rows[:8])
            lines.append(f"- {label}, `python -X importtime -c 'import {module}'` (cumulative ms): {top}")
    return lines
