"""``GET /models``: modelgate vs nginx (static, per-request gzip) vs the naive FastAPI app vs LiteLLM ``/v1/models``.

wrk (1 thread on the load core, 64 connections, ``--latency``) against each system, with a plain client and a
gzip client (``Accept-Encoding: gzip``). All servers run at once, each idle while another is measured, so the
repeats can be interleaved (repeat 1 of every case, then repeat 2, ...): noise from the shared machine then
spreads over all systems instead of landing on one.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, Proc, http_get, measured, run_pinned
from systems import LITELLM_MASTER_KEY, Server, start_fake, start_litellm, start_modelgate, start_naive, start_nginx

GZIP = {"Accept-Encoding": "gzip"}


@dataclass
class Case:
    system: str
    client: str  # "plain" | "gzip"
    url: str
    encoding: str = ""  # Content-Encoding the server answered this client with
    size: int = 0  # body bytes on the wire for one response
    check: str = ""  # what the body check found
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (LiteLLM's master key)
    proc: Proc | None = field(default=None, repr=False)  # the server answering (for its CPU)


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors + non-2xx
    server_cpu: float | None = None  # cores used by the server under test during the run
    foreign_cpu: float | None = None  # share of the server core used by other processes meanwhile


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(out: str) -> WrkRun:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    requests = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and requests):
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = 0
    if sockets := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(n) for n in sockets.groups())
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non2xx[1])
    return WrkRun(float(rps[1]), _ms(p50[1]), _ms(p99[1]), int(requests[1]), errors)


def wrk(
    url: str,
    *,
    gzip_client: bool,
    seconds: float,
    connections: int,
    headers: tuple[tuple[str, str], ...] = (),
    core: int | str = LOAD_CORE,
    threads: int = 1,
) -> WrkRun:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    if gzip_client:
        argv += ["-H", "Accept-Encoding: gzip"]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    return parse_wrk(run_pinned([*argv, url], core=core, timeout=seconds + 60))


def probe(case: Case, reference: Any) -> None:
    """One request as this case's client would send it: what encoding came back, and is it the right body."""
    sent = dict(case.headers) | (GZIP if case.client == "gzip" else {})
    _, headers, raw = http_get(case.url, sent)
    case.encoding = headers.get("content-encoding", "identity")
    case.size = len(raw)
    body = gzip.decompress(raw) if case.encoding == "gzip" else raw
    document = json.loads(body)
    if reference is None:
        case.check = f"{len(document.get('data', []))} models (LiteLLM's list shape)"
    else:
        case.check = "same document" if document == reference else "DIFFERENT document"


def run(
    results: Path,
    *,
    repeats: int,
    seconds: float,
    connections: int,
    litellm: bool,
    server: str,
    naive: bool = True,
    prev_bin: Path | None = None,
) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        modelgate = start_modelgate(results, server=server)
        servers.append(modelgate)
        _, _, body = http_get(f"{modelgate.url}/models")
        body_path = results / "models.json"
        body_path.write_bytes(body)
        reference = json.loads(body)
        nginx, static_url, gzip_url = start_nginx(results, body)
        servers.append(nginx)
        cases = [
            Case("nginx static file", "plain", f"{static_url}/models", proc=nginx.proc),
            Case("nginx per-request gzip", "gzip", f"{gzip_url}/models", proc=nginx.proc),
            Case("modelgate", "plain", f"{modelgate.url}/models", proc=modelgate.proc),
            Case("modelgate", "gzip", f"{modelgate.url}/models", proc=modelgate.proc),
        ]
        if prev_bin is not None:
            # The previous release serves the same built-in catalogue, so the same document.
            prev = start_modelgate(results, tag="-prev", bin_dir=prev_bin)
            prev.label = "modelgate-prev"
            servers.append(prev)
            cases += [
                Case("modelgate-prev", "plain", f"{prev.url}/models", proc=prev.proc),
                Case("modelgate-prev", "gzip", f"{prev.url}/models", proc=prev.proc),
            ]
        if naive:
            naive_app = start_naive(results, body_path)
            servers.append(naive_app)
            cases += [
                Case("naive FastAPI", "plain", f"{naive_app.url}/models", proc=naive_app.proc),
                Case("naive FastAPI", "gzip", f"{naive_app.url}/models", proc=naive_app.proc),
            ]
        expected: dict[str, Any] = {case.url: reference for case in cases}
        if litellm:
            # LiteLLM needs an upstream in its config; the fake is never called by /v1/models.
            fake = start_fake(results, tokens=1, interval_ms=1, listed=[])
            servers.append(fake)
            proxy = start_litellm(results, reference, fake.url)
            servers.append(proxy)
            for client in ("plain", "gzip"):
                auth = (("Authorization", f"Bearer {LITELLM_MASTER_KEY}"),)
                cases.append(
                    Case("LiteLLM /v1/models", client, f"{proxy.url}/v1/models", headers=auth, proc=proxy.proc)
                )
                expected[f"{proxy.url}/v1/models"] = None
        for case in cases:
            probe(case, expected[case.url])
            warm = wrk(
                case.url, gzip_client=case.client == "gzip", seconds=1, connections=connections, headers=case.headers
            )
            if warm.errors:
                raise RuntimeError(f"{case.system} ({case.client}): {warm.errors} errors during warm-up")
        runs: dict[int, list[WrkRun]] = {i: [] for i in range(len(cases))}
        for repeat in range(repeats):
            for i, case in enumerate(cases):
                with measured(case.proc) as figures:
                    run_ = wrk(
                        case.url,
                        gzip_client=case.client == "gzip",
                        seconds=seconds,
                        connections=connections,
                        headers=case.headers,
                    )
                run_.server_cpu, run_.foreign_cpu = figures.get("cpu"), figures.get("foreign")
                runs[i].append(run_)
                print(
                    f"  models r{repeat + 1} {case.system:24} {case.client:5} {run_.rps:9.0f} req/s "
                    f"p50 {run_.p50_ms:.2f} ms p99 {run_.p99_ms:.2f} ms errors {run_.errors} "
                    f"server cpu {run_.server_cpu or 0:.2f} other load on its core {run_.foreign_cpu or 0:.2f}",
                    flush=True,
                )
        notes = {s.label: s.note for s in servers if s.note}
        return {
            "connections": connections,
            "seconds": seconds,
            "body_bytes": len(body),
            "notes": notes,
            "cases": [
                {
                    **{f.name: getattr(case, f.name) for f in fields(case) if f.name != "proc"},
                    "runs": [asdict(r) for r in runs[i]],
                }
                for i, case in enumerate(cases)
            ],
        }
    finally:
        for server_ in reversed(servers):
            server_.proc.stop()
