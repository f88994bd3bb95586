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


def _json_request(port: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": False}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Reader(asyncio.Protocol):
    """One keep-alive connection sending the same request back to back; counts 200 replies."""

    def __init__(self, request: bytes, stop: float, counts: Counter[str]) -> None:
        self.request, self.stop, self.counts = request, stop, counts
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
        assert self.transport is not None
        if self.loop.time() < self.stop:
            self.transport.write(self.request)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _json_load(port: int, connections: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts: Counter[str] = Counter()
    stop = loop.time() + seconds
    readers = []
    for _ in range(connections):
        _, reader = await loop.create_connection(lambda: _Reader(_json_request(port), stop, counts), "127.0.0.1", port)
        readers.append(reader)
    await asyncio.gather(*(r.done for r in readers))
    return dict(counts)


def json_load_main(port: int, connections: int, seconds: float) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(_json_load(port, connections, seconds))))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="run modelgate from this tree's src/ instead of the installed one")
    parser.add_argument("--cases", default="api,v1,json")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--connections", type=int, default=16, help="json: keep-alive connections")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply (json: 1, a reply at once)")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds per case (0: none)")
    parser.add_argument("--json-load", nargs=3, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json_load:
        json_load_main(int(args.json_load[0]), int(args.json_load[1]), args.json_load[2])
        return
    logs = Path(tempfile.mkdtemp(prefix="relay_cpu_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATE_", "OPENROUTER_", "HF_"))}
    fake_port = free_port()
    fake_argv = [PY, str(BENCH / "fake_upstream.py"), "--port", str(fake_port), "--list-model", UPSTREAM]
    fake = start(
        "fake",
        [*fake_argv, "--tokens", str(args.tokens)],
        core=LOAD_CORE,
        log_dir=logs,
    )
    wait_tcp(fake, fake_port)
    port = free_port()
    env |= {"MODELGATE_OPENROUTER_BASE_URL": f"http://127.0.0.1:{fake_port}/api/v1", "OPENROUTER_API_KEY": "sk-or-b"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    server = start(
        "modelgate",
        [PY, "-m", "modelgate", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        core=SERVER_CORE,
        log_dir=logs,
        env=env,
        cwd=Path(tempfile.gettempdir()),  # not ROOT: the installed (or --src) tree, never ./src by accident
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(server, f"{url}/models")
        for case in args.cases.split(","):
            profiler = None
            raw = logs / f"{case}.raw"
            if case == "json":
                argv = [PY, __file__, "--json-load", str(port), str(args.connections), str(args.seconds)]
            else:
                path = f"/api/ai/{MODEL}/chat" if case == "api" else "/v1/chat/completions"
                body: dict[str, Any] = {"messages": MESSAGES}
                if case == "v1":
                    body |= {"model": MODEL, "stream": True}
                argv = [PY, str(BENCH / "loadgen.py"), "--url", url + path, "--body", json.dumps(body)]
                argv += ["--format", "data" if case == "api" else "sse", "--concurrency", str(args.streams)]
                argv += ["--seconds", str(args.seconds), "--warmup", "1", "--expect-tokens", str(args.tokens)]
            before, t0 = cpu_seconds(server.pid), time.monotonic()
            if args.profile:
                profiler = _profile(server.pid, args.profile, raw)
            done = subprocess.run(pinned(LOAD_CORE, argv), capture_output=True, check=True, text=True)
            time.sleep(0.3)  # the server finishes the streams the load cut
            cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - t0
            result = json.loads(done.stdout)
            if case == "json":
                n = result.get("ok", 0)
                line = f"json: {n} ok, {result.get('error', 0)} errors, {n / args.seconds:,.0f} req/s, "
                line += f"server CPU {cpu / wall:.2f} cores, {1000 * cpu / max(n, 1):.3f} CPU-ms/request"
            else:
                tokens = result["tokens"]
                ttft = sorted(result["ttft_s"])
                p50 = 1000 * ttft[len(ttft) // 2] if ttft else float("nan")
                line = f"{case}: {tokens:,} tokens ({result['tokens_per_s']:,.0f}/s), ok {result['ok']}, "
                line += f"errors {result['errors']}, TTFT p50 {p50:.1f} ms, server CPU {cpu / wall:.2f} cores, "
                line += f"{cpu * 1000 / max(tokens, 1):.3f} CPU-s/1k tokens"
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
