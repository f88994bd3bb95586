"""Server CPU per unit of work: CPU-seconds per 1,000 relayed tokens, CPU-milliseconds per non-streamed request.

Wall-clock throughput on a busy shared machine is noisy; the server process's own CPU time for a fixed load is
not (much). This runs the bench's fake upstream and ``modelgate serve --workers 1`` (pinned as in the bench:
server on core 0, fake and load on core 1), then for each case reads the server's user+system CPU time before
and after the load and divides by the work done:

- ``api``: N concurrent streams on ``/api/ai/openrouter/llama-3.3-70b-instruct/chat`` (``loadgen.py``);
- ``v1``: the same on ``/v1/chat/completions`` with ``stream: true``;
- ``json``: non-streamed ``/v1/chat/completions`` (a fake that answers at once), closed loop over
  ``--connections`` keep-alive connections.

``--src DIR`` runs another tree's ``src/`` (``git archive <commit> src | tar -x -C DIR``): a before/after pair
in one invocation. ``--profile SECONDS`` records py-spy (collapsed stacks) during each case and prints the
functions with the most self samples.

    .venv/bin/python bench/relay_cpu.py --cases api,v1,json --streams 200 --seconds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httptools

from harness import LOAD_CORE, SERVER_CORE, free_port, pinned, start, wait_http, wait_tcp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
MODEL = "openrouter/llama-3.3-70b-instruct"
UPSTREAM = "meta-llama/llama-3.3-70b-instruct"
MESSAGES = [{"role": "user", "content": "Hello!"}]


def _request(port: int, path: str, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


#: case → (path, body): the three loads.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "api": (f"/api/ai/{MODEL}/chat", {"messages": MESSAGES}),
    "v1": ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}),
    "json": ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": False}),
}


class _Reader(asyncio.Protocol):
    """One keep-alive connection sending the same request back to back (until a time, or a count); counts
    complete replies by status."""

    def __init__(self, request: bytes, stop: float, left: int, counts: Counter[str]) -> None:
        self.request, self.stop, self.left, self.counts = request, stop, left, counts
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.counts["ok" if self.parser.get_status_code() == 200 else "error"] += 1
        self.left -= 1
        assert self.transport is not None
        if self.loop.time() < self.stop and self.left > 0:
            self.transport.write(self.request)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _closed_loop(port: int, case: str, connections: int, seconds: float, count: int) -> dict[str, Any]:
    """``connections`` keep-alive connections, each sending ``case``'s request back to back for ``seconds``
    or ``count`` requests in all (whichever ends first)."""
    loop = asyncio.get_running_loop()
    counts: Counter[str] = Counter()
    stop = loop.time() + seconds
    request = _request(port, *CASES[case])
    readers = []
    for i in range(connections):
        share = count // connections + (1 if i < count % connections else 0)
        if share == 0:
            continue
        _, reader = await loop.create_connection(
            lambda share=share: _Reader(request, stop, share, counts), "127.0.0.1", port
        )
        readers.append(reader)
    await asyncio.gather(*(r.done for r in readers))
    return dict(counts)


def closed_loop_main(port: int, case: str, connections: int, seconds: float, count: int) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(_closed_loop(port, case, connections, seconds, count))))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [str(Path(PY).parent / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--gil", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(pinned(LOAD_CORE, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path, n: int = 25) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The frames with the most self samples and the modelgate/library functions with the most inclusive ones."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        for frame in {f.rsplit(":", 1)[0] for f in frames}:
            inclusive[frame] += int(count)
        total += int(count)
    return (
        [(frame, 100 * c / total) for frame, c in own.most_common(n)],
        [(frame, 100 * c / total) for frame, c in inclusive.most_common(n + 15)],
    )


def _callgrind(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], capture_output=True, check=True, timeout=120)


def _callgrind_total(pid: int, logs: Path) -> int:
    """Dump the counters and return the instructions counted since the last zeroing."""
    before = set(logs.glob("cg.out*"))
    _callgrind(pid, "--dump")
    for _ in range(600):
        new = set(logs.glob("cg.out*")) - before
        for path in new:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="run modelgate from this tree's src/ instead of the installed one")
    parser.add_argument("--cases", default="api,v1,json")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--connections", type=int, default=16, help="json: keep-alive connections")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply (json: 1, a reply at once)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="between two tokens of a reply")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds per case (0: none)")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count the server's instructions (valgrind) instead of its CPU time: robust on a busy machine; "
        "use a load it keeps up with under valgrind (e.g. --streams 4 --interval-ms 20 --seconds 20)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=0,
        help="a fixed number of complete requests per case over --connections connections (a fixed amount "
        "of work: what --callgrind wants); default: streams by loadgen.py for --seconds, json for --seconds",
    )
    parser.add_argument("--closed-loop", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.closed_loop:
        port, case, connections, seconds, count = args.closed_loop
        closed_loop_main(int(port), case, int(connections), float(seconds), int(count))
        return
    logs = Path(tempfile.mkdtemp(prefix="relay_cpu_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATE_", "OPENROUTER_", "HF_"))}
    fake_port = free_port()
    fake_argv = [PY, str(BENCH / "fake_upstream.py"), "--port", str(fake_port), "--list-model", UPSTREAM]
    fake = start(
        "fake",
        [*fake_argv, "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms)],
        core=LOAD_CORE,
        log_dir=logs,
    )
    wait_tcp(fake, fake_port)
    port = free_port()
    env |= {"MODELGATE_OPENROUTER_BASE_URL": f"http://127.0.0.1:{fake_port}/api/v1", "OPENROUTER_API_KEY": "sk-or-b"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    serve = [PY, "-m", "modelgate", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if args.callgrind:
        serve = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={logs}/cg.out", *serve]
    server = start(
        "modelgate",
        serve,
        core=SERVER_CORE,
        log_dir=logs,
        env=env,
        cwd=Path(tempfile.gettempdir()),  # not ROOT: the installed (or --src) tree, never ./src by accident
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(server, f"{url}/models", timeout=600 if args.callgrind else 60)
        for case in args.cases.split(","):
            profiler = None
            raw = logs / f"{case}.raw"
            if case == "idle":  # the server's own background work (timers, writer threads) per second
                if args.callgrind:
                    _callgrind(server.pid, "--zero")
                    _callgrind(server.pid, "--instr=on")
                before, t0 = cpu_seconds(server.pid), time.monotonic()
                time.sleep(args.seconds)
                cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - t0
                line = f"idle: server CPU {cpu / wall:.3f} cores"
                if args.callgrind:
                    _callgrind(server.pid, "--instr=off")
                    line += f", {_callgrind_total(server.pid, logs) / wall / 1e6:.2f} M instructions/s"
                print(line, flush=True)
                continue
            fixed = args.count or (10**9 if case == "json" else 0)
            if fixed:
                seconds = str(args.seconds if not args.count else 10**6)
                argv = [PY, __file__, "--closed-loop", str(port), case, str(args.connections), seconds, str(fixed)]
            else:
                path = f"/api/ai/{MODEL}/chat" if case == "api" else "/v1/chat/completions"
                body: dict[str, Any] = {"messages": MESSAGES}
                if case == "v1":
                    body |= {"model": MODEL, "stream": True}
                argv = [PY, str(BENCH / "loadgen.py"), "--url", url + path, "--body", json.dumps(body)]
                argv += ["--format", "data" if case == "api" else "sse", "--concurrency", str(args.streams)]
                argv += ["--seconds", str(args.seconds), "--warmup", "1", "--expect-tokens", str(args.tokens)]
            # A first, unmeasured round: imports on first use, the ledger's database, connection pools.
            warm = [a if a not in (str(args.seconds), str(args.count)) else "2" for a in argv]
            subprocess.run(pinned(LOAD_CORE, warm), capture_output=True, check=True)
            time.sleep(0.5 if not args.callgrind else 5)
            if args.callgrind:
                _callgrind(server.pid, "--zero")
                _callgrind(server.pid, "--instr=on")
            before, t0 = cpu_seconds(server.pid), time.monotonic()
            if args.profile:
                profiler = _profile(server.pid, args.profile, raw)
            done = subprocess.run(pinned(LOAD_CORE, argv), capture_output=True, check=True, text=True)
            time.sleep(0.3 if not args.callgrind else 5)  # the server finishes the streams the load cut
            cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - t0
            instructions = 0
            if args.callgrind:
                _callgrind(server.pid, "--instr=off")
                instructions = _callgrind_total(server.pid, logs)
            result = json.loads(done.stdout)
            if fixed:
                n = result.get("ok", 0)
                line = f"{case}: {n} ok, {result.get('error', 0)} errors, {n / wall:,.1f} req/s in {wall:.1f} s, "
                line += f"server CPU {cpu / wall:.2f} cores, {1000 * cpu / max(n, 1):.3f} CPU-ms/request"
                if case != "json":
                    line += f", {1000 * cpu / max(n * args.tokens, 1):.3f} CPU-s/1k tokens"
                if instructions:
                    line += f", {instructions / max(n, 1) / 1e6:.2f} M instructions/request"
                    if case != "json":
                        line += f" ({instructions / max(n * args.tokens, 1) / 1e3:.1f} M/1k tokens)"
            else:
                tokens = result["tokens"]
                ttft = sorted(result["ttft_s"])
                p50 = 1000 * ttft[len(ttft) // 2] if ttft else float("nan")
                line = f"{case}: {tokens:,} tokens ({result['tokens_per_s']:,.0f}/s), ok {result['ok']}, "
                line += f"errors {result['errors']}, TTFT p50 {p50:.1f} ms, server CPU {cpu / wall:.2f} cores, "
                line += f"{cpu * 1000 / max(tokens, 1):.3f} CPU-s/1k tokens"
                if instructions:
                    line += f", {instructions / max(tokens, 1) / 1e3:.1f} M instructions/1k tokens"
            print(line, flush=True)
            if profiler is not None:
                profiler.wait()
                if raw.exists():
                    own, inclusive = top_functions(raw)
                    print("  self:")
                    for frame, share in own:
                        print(f"    {share:5.1f}%  {frame}")
                    print("  inclusive:")
                    for frame, share in inclusive:
                        print(f"    {share:5.1f}%  {frame}")
    finally:
        server.stop()
        fake.stop()


if __name__ == "__main__":
    main()
