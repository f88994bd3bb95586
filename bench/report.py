"""results.json → results.md (tables, target checks) and plot.png (tokens/s and TTFT vs concurrent streams)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def spread(values: Iterable[float | None], digits: int = 1) -> str:
    """Median of the repeats with their range: ``12.3 (11.9-13.0)``."""
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    mid = statistics.median(present)
    if len(present) == 1:
        return _num(mid, digits)
    return f"{_num(mid, digits)} ({_num(min(present), digits)}-{_num(max(present), digits)})"


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


# --- GET /models ---------------------------------------------------------------------------------------


def models_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## `GET /models`",
        "",
        f"wrk, 1 thread on core 1, {data['connections']} connections, {data['seconds']:g} s per run, "
        f"`--latency`; body {data['body_bytes']:,} bytes. Median of the repeats (range). Server CPU in cores; "
        "other load = share of the server's core used by other processes during the run (the machine is shared).",
        "",
        "| system | client | answered with | bytes | req/s | p50 ms | p99 ms | errors | server CPU | other load "
        "| body check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for case in data["cases"]:
        runs = case["runs"]
        by[(case["system"], case["client"])] = runs
        lines.append(
            f"| {case['system']} | {case['client']} | {case['encoding']} | {case['size']:,} | "
            f"{spread((r['rps'] for r in runs), 0)} | {spread((r['p50_ms'] for r in runs), 2)} | "
            f"{spread((r['p99_ms'] for r in runs), 2)} | {sum(r['errors'] for r in runs)} | "
            f"{spread((r.get('server_cpu') for r in runs), 2)} | {spread((r.get('foreign_cpu') for r in runs), 2)} | "
            f"{case['check']} |"
        )

    def rps(system: str, client: str) -> float | None:
        return median(r["rps"] for r in by.get((system, client), []))

    def p99(system: str, client: str) -> float | None:
        return median(r["p99_ms"] for r in by.get((system, client), []))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    plain_vs_nginx = ratio(rps("modelgate", "plain"), rps("nginx static file", "plain"))
    gzip_vs_nginx = ratio(rps("modelgate", "gzip"), rps("nginx per-request gzip", "gzip"))
    vs_litellm = ratio(rps("modelgate", "plain"), rps("LiteLLM /v1/models", "plain"))
    vs_naive = ratio(rps("modelgate", "plain"), rps("naive FastAPI", "plain"))
    mg_p99 = max((p for p in (p99("modelgate", "plain"), p99("modelgate", "gzip")) if p is not None), default=None)
    naive_p99 = p99("naive FastAPI", "plain")
    lines += [
        "",
        "| target (issues 2 and 6) | figure | verdict |",
        "|---|---|---|",
        _target("plain: ≥ 40% of nginx static req/s", plain_vs_nginx, "{:.0%}", lambda v: v >= 0.4),
        _target("gzip: more than nginx per-request gzip", gzip_vs_nginx, "{:.2f}x", lambda v: v > 1),
        _target("≥ 100x LiteLLM `/v1/models`", vs_litellm, "{:.0f}x", lambda v: v >= 100),
        _target("p99 < 5 ms at 64 connections (worst client)", mg_p99, "{:.2f} ms", lambda v: v < 5),
        _target("≥ 4x the naive FastAPI handler", vs_naive, "{:.1f}x", lambda v: v >= 4),
        _target(
            "p99 lower than the naive handler's",
            None if mg_p99 is None or naive_p99 is None else mg_p99 / naive_p99,
            "{:.2f} of naive",
            lambda v: v < 1,
        ),
    ]
    return lines


def _target(name: str, value: float | None, fmt: str, ok: Callable[[float], bool]) -> str:
    if value is None:
        return f"| {name} | not measured | — |"
    return f"| {name} | {fmt.format(value)} | {verdict(ok(value))} |"


# --- streaming -----------------------------------------------------------------------------------------


def stream_rows(system: dict[str, Any], level: int) -> list[dict[str, Any]]:
    return [r for r in system["runs"] if r["level"] == level]


def stream_section(data: dict[str, Any], title: str = "## Streaming chat") -> list[str]:
    lines = [
        title,
        "",
        f"Fake upstream: {data['tokens']} tokens {data['interval_ms']:g} ms apart per stream (OpenRouter SSE). "
        "Load generator: raw asyncio sockets on core 1, concurrent streams back to back for the window; "
        "tokens/s after a warm-up; TTFT includes streams still waiting at the end of the window as lower bounds "
        "(`censored`). Server CPU in cores (1.00 = the whole server core); peak RSS of the server's process tree. "
        "Load core = fake + load generator CPU (near 1.00 means the load side, not the server, was the limit).",
        "",
        "| system | streams | tokens/s | TTFT p50 ms | TTFT p99 ms | errors | censored | server CPU "
        "| CPU ms / 1k tokens | peak RSS MB | load core | other load on server core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in data["systems"].values():
        for level in data["levels"]:
            runs = stream_rows(system, level)
            if not runs:
                continue
            lines.append(
                f"| {system['label']} | {level} | {spread((r['tokens_per_s'] for r in runs), 0)} | "
                f"{spread((r['ttft_p50_ms'] for r in runs), 2)} | {spread((r['ttft_p99_ms'] for r in runs), 1)} | "
                f"{sum(r['errors'] for r in runs)} | {sum(r['censored'] for r in runs)} | "
                f"{spread((r['server_cpu'] for r in runs), 2)} | "
                f"{spread((r.get('cpu_ms_per_1k_tokens') for r in runs), 1)} | "
                f"{_peak(runs)} | "
                f"{spread(((r['fake_cpu'] or 0) + r['loadgen_cpu'] for r in runs), 2)} | "
                f"{spread((r.get('foreign_cpu') for r in runs), 2)} |"
            )
    errors = {
        (system["label"], r["level"]): r["error_samples"]
        for system in data["systems"].values()
        for r in system["runs"]
        if r["error_samples"]
    }
    waits = [
        f"{system['label']} @ {r['level']} r{r['repeat'] + 1}: {r['drain_s']:.0f} s"
        for system in data["systems"].values()
        for r in system["runs"]
        if r.get("drain_s", 0) > 1
    ]
    if waits:
        lines += ["", "Waited for the server to finish the previous run's abandoned streams: " + "; ".join(waits)]
    if errors:
        lines += ["", "Error samples (first of each kind):", ""]
        for (label, level), samples in errors.items():
            for text, count in list(samples.items())[:2]:
                lines.append(f"- {label} @ {level}: {count}x `{text}`")
    return [*lines, "", *stream_targets(data)]


def _peak(runs: list[dict[str, Any]]) -> str:
    peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"]]
    return _num(max(peaks), 0) if peaks else "—"


def stream_targets(data: dict[str, Any]) -> list[str]:
    systems = data["systems"]

    def fig(key: str, level: int, field: str) -> float | None:
        if key not in systems:
            return None
        return median(r[field] for r in stream_rows(systems[key], level))

    lines = ["| target (issues 3 and 6) | figure | verdict |", "|---|---|---|"]
    direct_ttft = fig("direct", 1, "ttft_p50_ms")
    for key in ("api", "v1"):
        if key not in systems:
            continue
        label = systems[key]["label"]
        mg = fig(key, 1, "ttft_p50_ms")
        added = None if mg is None or direct_ttft is None else mg - direct_ttft
        lines.append(_target(f"{label}: added TTFT p50 at 1 stream ≤ 2 ms", added, "{:.2f} ms", lambda v: v <= 2))
        if 200 in data["levels"]:
            tps, direct_tps, litellm_tps = (
                fig(key, 200, "tokens_per_s"),
                fig("direct", 200, "tokens_per_s"),
                fig("litellm", 200, "tokens_per_s"),
            )
            lines.append(
                _target(
                    f"{label}: tokens/s at 200 streams ≥ 50% of direct",
                    None if tps is None or not direct_tps else tps / direct_tps,
                    "{:.0%}",
                    lambda v: v >= 0.5,
                )
            )
            lines.append(
                _target(
                    f"{label}: tokens/s at 200 streams ≥ 10x LiteLLM",
                    None if tps is None or not litellm_tps else tps / litellm_tps,
                    "{:.1f}x",
                    lambda v: v >= 10,
                )
            )
        if 500 in data["levels"]:
            runs = stream_rows(systems[key], 500)
            lines.append(
                _target(
                    f"{label}: 500 streams, zero errors",
                    float(sum(r["errors"] for r in runs)),
                    "{:.0f}",
                    lambda v: v == 0,
                )
            )
            peak = max((r["peak_rss_mb"] or 0 for r in runs), default=None)
            lines.append(_target(f"{label}: peak RSS at 500 streams < 150 MB", peak, "{:.0f} MB", lambda v: v < 150))
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for system in data["systems"].values():
        xs, tps, tps_lo, tps_hi, ttft, ttft_lo, ttft_hi = [], [], [], [], [], [], []
        for level in data["levels"]:
            runs = stream_rows(system, level)
            if not runs:
                continue
            t = [r["tokens_per_s"] for r in runs]
            f = [r["ttft_p50_ms"] for r in runs if r["ttft_p50_ms"] is not None]
            xs.append(level)
            tps.append(statistics.median(t))
            tps_lo.append(statistics.median(t) - min(t))
            tps_hi.append(max(t) - statistics.median(t))
            mid = statistics.median(f) if f else float("nan")
            ttft.append(mid)
            ttft_lo.append(mid - min(f) if f else 0)
            ttft_hi.append(max(f) - mid if f else 0)
        left.errorbar(xs, tps, yerr=[tps_lo, tps_hi], marker="o", capsize=3, label=system["label"])
        right.errorbar(xs, ttft, yerr=[ttft_lo, ttft_hi], marker="o", capsize=3, label=system["label"])
    left.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="tokens/s (aggregate)", title="Throughput")
    right.set(
        xscale="log", yscale="log", xlabel="concurrent streams", ylabel="TTFT p50 (ms)", title="Time to first token"
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Streaming: {data['tokens']} tokens {data['interval_ms']:g} ms apart; median of repeats, bars = range"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- soak ----------------------------------------------------------------------------------------------


def soak_section(data: dict[str, Any]) -> list[str]:
    samples = data["rss"]
    lines = [
        "## Soak",
        "",
        f"{data['streams']} concurrent streams through modelgate `{data['path']}` for {data['minutes']:g} min; "
        f"RSS sampled every {data['interval_s']:g} s (plot `soak.png`).",
        "",
        f"- streams completed ok: {data['ok']:,}; errors: {data['errors']}; cut at the end: {data['cut']}",
        f"- tokens/s (whole run): {data['tokens_per_s']:,.0f}; server CPU {data['server_cpu']:.2f} cores",
        f"- RSS after warm-up ({data['warmup_s']:g} s): {data['rss_after_warmup_mb']:.1f} MB; "
        f"at the end: {data['rss_end_mb']:.1f} MB; peak {data['rss_peak_mb']:.1f} MB",
        f"- growth after warm-up: {data['growth']:+.1%} "
        f"(target < 10%: {verdict(data['growth'] < 0.10)}; zero errors: {verdict(data['errors'] == 0)})",
        "",
        "| t (s) | RSS (MB) |",
        "|---:|---:|",
    ]
    lines += [f"| {t:.0f} | {rss / 2**20:.1f} |" for t, rss in samples]
    return lines


def soak_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ts = [t for t, _ in data["rss"]]
    ax.plot(ts, [rss / 2**20 for _, rss in data["rss"]], marker=".")
    ax.axvline(data["warmup_s"], color="grey", linestyle="--", label="end of warm-up")
    ax.set(xlabel="seconds", ylabel="RSS (MB)", title=f"modelgate RSS, {data['streams']} concurrent streams")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
