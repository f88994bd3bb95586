"""A fast fake OpenRouter for the benchmarks: ``POST .../chat/completions`` streams N tokens D ms apart.

It speaks the OpenRouter streaming format of providers.md §3.4 byte for byte: a ``: OPENROUTER PROCESSING``
comment, ``data: <chat.completion.chunk>`` events whose first delta carries ``role``, a last chunk with
``finish_reason: "stop"`` and ``usage``, then ``data: [DONE]``; HTTP/1.1 chunked, keep-alive. Both
modelgate's openrouter provider (``MODELGATE_OPENROUTER_BASE_URL=http://127.0.0.1:PORT/api/v1``) and
LiteLLM (an ``openai/<model>`` entry with ``api_base``) read it, and the load generator can read it directly.

Why raw asyncio + httptools instead of an ASGI app: the fake shares core 1 with the load generator and
must send ~100,000 events/s at 500 streams, so it may not become the bottleneck it is meant to measure
around. Every chunk's bytes are built once per (model, token index) and each token is scheduled at an
absolute time (``call_at``) so a late tick does not shift the rest of the stream. Writes honour TCP
backpressure: a paused transport delays the next token instead of buffering without bound, like a real
upstream whose socket buffer is full.

Each token text is `` ~<word>``: the ``~`` marker lets the load generator count delivered tokens with
one ``bytes.count`` whatever framing a gateway re-encodes them into (JSON keeps ``~`` as is).

    python bench/fake_upstream.py --port 0 --tokens 200 --interval-ms 5   # prints "PORT <n>" when ready
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import httptools

WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
CREATED = 1740000000


def token_text(i: int) -> str:
    return f" ~{WORDS[i % len(WORDS)]}"


def _chunked(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``payload``."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Script:
    """The precomputed byte chunks of one model's reply (all streams of a model send the same text)."""

    def __init__(self, model: str, tokens: int) -> None:
        def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": "gen-bench-1",
                "provider": "Bench",
                "model": model,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            }
            if usage is not None:
                body["usage"] = usage
            return body

        events = [_event(chunk({"role": "assistant", "content": token_text(i)}, None)) for i in range(tokens)]
        usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        # The first token goes out with the processing comment, the finish chunk and [DONE] with the last token.
        events[0] = b": OPENROUTER PROCESSING\n\n" + events[0]
        events[-1] += _event(chunk({"role": "assistant", "content": ""}, "stop", usage)) + b"data: [DONE]\n\n"
        self.chunks = [_chunked(e) for e in events]
        self.chunks[-1] += b"0\r\n\r\n"
        text = "".join(token_text(i) for i in range(tokens))
        self.whole = json.dumps(
            {
                "id": "gen-bench-1",
                "provider": "Bench",
                "model": model,
                "object": "chat.completion",
                "created": CREATED,
                "choices": [
                    {
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": "stop",
                        "native_finish_reason": "stop",
                        "message": {"role": "assistant", "content": text, "refusal": None, "reasoning": None},
                    }
                ],
                "usage": usage,
            },
            separators=(",", ":"),
        ).encode()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-generation-id: gen-bench-1\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _plain(status: str, body: bytes, keep_alive: bool) -> bytes:
    conn = b"keep-alive" if keep_alive else b"close"
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n%s" % (
        status.encode(),
        len(body),
        conn,
        body,
    )


class Fake:
    def __init__(self, tokens: int, interval: float, listed: list[str]) -> None:
        self.listed = listed
        self.tokens = tokens
        self.interval = interval
        self.scripts: dict[str, Script] = {}
        self.streams_started = 0
        self.streams_finished = 0

    def script(self, model: str) -> Script:
        found = self.scripts.get(model)
        if found is None:
            found = self.scripts[model] = Script(model, self.tokens)
        return found


class Connection(asyncio.Protocol):
    """One client connection; requests are served one after another (HTTP/1.1 keep-alive, no pipelining)."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.paused = False
        self.closed = False
        # state of the stream being sent
        self.chunks: list[bytes] = []
        self.next_index = 0
        self.start = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._reply(_plain("400 Bad Request", b'{"error":{"code":400,"message":"bad request"}}', False))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.chunks and self.timer is None:
            self._send_next()

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(b"".join(self.body))
        elif method == b"GET" and path.endswith(b"/models"):
            models = [{"id": model, "object": "model"} for model in self.fake.listed]
            self._reply(_plain("200 OK", json.dumps({"data": models}).encode(), self.keep_alive))
        else:
            self._reply(_plain("404 Not Found", b'{"error":{"code":404,"message":"not found"}}', self.keep_alive))

    # --- replies
    def _reply(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            if not self.keep_alive:
                self.transport.close()

    def _chat(self, raw: bytes) -> None:
        try:
            request = json.loads(raw)
            model = str(request["model"])
            stream = bool(request.get("stream"))
        except (ValueError, KeyError, TypeError):
            self._reply(_plain("400 Bad Request", b'{"error":{"code":400,"message":"invalid JSON body"}}', False))
            return
        script = self.fake.script(model)
        if not stream:
            self._reply(_plain("200 OK", script.whole, self.keep_alive))
            return
        assert self.transport is not None
        self.fake.streams_started += 1
        self.transport.write(STREAM_HEAD)
        self.chunks = script.chunks
        self.next_index = 0
        self.start = self.loop.time()
        self._send_next()

    def _send_next(self) -> None:
        self.timer = None
        if self.closed or self.transport is None:
            return
        if self.paused:
            return  # resume_writing() continues the stream
        self.transport.write(self.chunks[self.next_index])
        self.next_index += 1
        if self.next_index == len(self.chunks):
            self.chunks = []
            self.fake.streams_finished += 1
            if not self.keep_alive:
                self.transport.close()
            return
        due = self.start + self.next_index * self.fake.interval
        self.timer = self.loop.call_at(due, self._send_next)


async def serve(host: str, port: int, tokens: int, interval: float, listed: list[str]) -> None:
    fake = Fake(tokens, interval, listed)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(fake), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"streams started={fake.streams_started} finished={fake.streams_finished}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--list-model", action="append", default=[], help="a model id GET /models lists")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop()) as runner:
        runner.run(serve(args.host, args.port, args.tokens, args.interval_ms / 1000, args.list_model))


def new_event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where installed (the bench venv has it), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
