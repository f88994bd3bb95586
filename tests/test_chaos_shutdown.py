"""SIGTERM in the middle of the chaos (``test_chaos_leaks.py``), against a real ``modelgate serve``.

The same hostile upstream and misbehaving clients, plus clients that read every reply to its end; readers of replies
that never end (on every route) start first. Once half the chaos is over the process gets SIGTERM: every reply a
reader got must end the way its protocol ends (a finish, or an explicit error part: the endless ones "The server is
shutting down" at the limit), never by a silent cut; the process exits on its own after draining; and every request
that reached the upstream has its ledger row.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli_process import serve_subprocess, wait_for
from tests.fakes.hostile import HostileUpstream
from tests.test_chaos_leaks import ADMIN, BEHAVIOURS, MODES, ROUTES, Upstream, chaos_catalogue, drive

REQUESTS = 160
#: Modes whose reply runs until the server ends it (the upstream never answers, or stops mid-reply).
ENDLESS = ("stall_head", "stall_mid", "fallback_stall")
#: Readers of endless replies started before the chaos (so no cap refuses them), on every route: running at the limit.
#: A fallback that stalls holds none of ``chaos/primary``'s slots, which the chaos keeps.
ENDLESS_READERS = [(route, "fallback_stall") for route in ROUTES] + [
    (route, "stall_mid") for route in ("data", "ui", "v1-stream", "responses-stream")
]
GRACE = 3  # --graceful-timeout


def dechunked(body: bytes) -> bytes | None:
    """A chunked body's bytes, or None when it was cut before its last (empty) chunk."""
    out = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return None
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        if len(rest) < size + 2:
            return None
        out, body = out + rest[:size], rest[size + 2 :]


def events(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body."""
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def ending_problem(route: str, raw: bytes) -> str | None:
    """Why ``raw`` (one whole HTTP response, as read to the close) is not a complete reply, or None."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return "no complete head"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        content = dechunked(body)
        if content is None:
            return "cut inside the chunked body (no last chunk)"
    else:
        length = int(headers.get("content-length", "-1"))
        if len(body) != length:
            return f"{len(body)} bytes of a {length}-byte body"
        content = body
    streamed = route in ("data", "ui", "v1-stream", "responses-stream")
    if status != 200 or not streamed:
        try:
            json.loads(content)
        except ValueError:
            return "a whole body that is not JSON"
        return None
    if route == "data":
        last = [line for line in content.split(b"\n") if line][-1:]
        if not last or last[0][:2] not in (b"3:", b"e:", b"d:"):
            return f"a data stream ending in {last!r}"
    elif route == "ui":
        parts = events(content)
        if parts[-1:] != [b"[DONE]"] or len(parts) < 2 or json.loads(parts[-2])["type"] not in ("finish", "error"):
            return f"a UI stream ending in {parts[-2:]!r}"
    elif route == "v1-stream":
        parts = events(content)
        if parts[-1:] != [b"[DONE]"]:
            return f"a /v1 stream ending in {parts[-2:]!r}"
        chunks = [json.loads(part) for part in parts[:-1]]
        finished = any(c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", []))
        if not finished and "error" not in (chunks[-1] if chunks else {}):
            return f"a /v1 stream without a finish_reason or an error chunk: {parts[-3:]!r}"
    else:
        parts = events(content)
        last = json.loads(parts[-1])["type"] if parts else None
        if last not in ("response.completed", "response.failed"):
            return f"a Responses stream ending in {parts[-2:]!r}"
    return None


def reached_upstream(hostile: HostileUpstream) -> set[str]:
    """The ids of the requests that reached the upstream (a retry or a fallback is the same request)."""
    return {json.loads(r.body)["messages"][-1]["content"].split("rid=")[1] for r in list(hostile.received)}


def endless(rids: set[str]) -> set[str]:
    """The readers of an endless reply among ``rids`` (ended only by the server)."""
    return {rid for rid in rids if rid.endswith("-read_to_end") and rid.split("-")[-2] in ENDLESS}


@pytest.mark.timeout(240)
def test_sigterm_mid_chaos_ends_every_reply_exits_0_and_ledgers_every_upstream_request(
    hostile: HostileUpstream, tmp_path: Path
) -> None:
    catalogue = tmp_path / "chaos.toml"
    catalogue.write_text(chaos_catalogue(hostile, tmp_path), encoding="utf-8")
    database = tmp_path / "usage.sqlite3"
    env = {
        "MODELGATE_PROBE_INTERVAL": "0",
        "MODELGATE_ADMIN_KEY": ADMIN,
        "MODELGATE_DATABASE_URL": f"sqlite:///{database}",
        "MODELGATE_LEDGER_FLUSH_INTERVAL": "0.1",
        "MODELGATE_CLIENT_SEND_TIMEOUT": "2",
    }
    rng = random.Random(20240612)
    plan = []
    for i in range(REQUESTS):
        route, mode = rng.choice(ROUTES), rng.choice(MODES)
        behaviour = "read_to_end" if i % 2 else rng.choice(BEHAVIOURS)
        key = "limited" if i % 3 == 0 else "free"
        plan.append((route, mode, behaviour, key, f"chaos-{i:04d}-{route}-{mode}-{behaviour}"))

    hostile.reset(Upstream())
    try:
        args = ["--config", str(catalogue), "--graceful-timeout", str(GRACE)]
        with serve_subprocess(args, tmp_path, env=env) as served:

            def one(item: tuple[str, str, str, str, str]) -> bytes | None:
                route, mode, behaviour, key, rid = item
                reader = behaviour == "read_to_end"
                try:
                    return drive(
                        served.url,
                        route,
                        mode,
                        "full" if reader else behaviour,
                        key,
                        rid,
                        random.Random(rid),
                        patience=60.0 if reader else 2.0,
                    )
                except (ConnectionRefusedError, ConnectionResetError):
                    # Came after SIGTERM: refused, or reset in the listen backlog (checked below: never accepted).
                    return None

            done: list[bytes | None] = []

            def counted(item: tuple[str, str, str, str, str]) -> bytes | None:
                answer = one(item)
                done.append(answer)
                return answer

            readers = [
                (route, mode, "read_to_end", "free", f"endless-{route}-{mode}-read_to_end")
                for route, mode in ENDLESS_READERS
            ]
            # Enough threads that the chaos goes on past its own endless readers (at most a cap's worth of them).
            with ThreadPoolExecutor(len(readers)) as first, ThreadPoolExecutor(32) as pool:
                ending = first.map(one, readers)
                wanted = {item[4] for item in readers}
                wait_for(lambda: wanted <= reached_upstream(hostile), "the endless replies to reach the upstream")
                running = pool.map(counted, plan)
                wait_for(lambda: len(done) >= REQUESTS // 2, "half the chaos over")
                served.signal(signal.SIGTERM)
                answers = list(running)
                endings = list(ending)
            code = served.process.wait(timeout=60)
            log = served.log()
        reached = reached_upstream(hostile)
    finally:
        hostile.reset()

    # Exited on its own after draining. uvicorn raises the SIGTERM it shut down on again (tests/cluster.py: a clean
    # exit is -SIGTERM with one worker; the supervisor of --workers N returns, 0).
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert "Application shutdown complete." in log, log[-3000:]
    # A reader with nothing (refused, or reset) may only be one whose request never reached the upstream.
    read = [
        (item, raw) for item, raw in zip(plan + readers, answers + endings, strict=True) if item[2] == "read_to_end"
    ]
    unanswered = [item[4] for item, raw in read if not raw and item[4] in reached]
    assert not unanswered, unanswered
    statuses = {raw[9:12] for _, raw in read if raw}
    assert b"200" in statuses, statuses
    problems = {item[4]: problem for item, raw in read if raw and (problem := ending_problem(item[0], raw))}
    assert not problems, problems
    # The endless replies were still running at SIGTERM: each was ended at the limit with its error, not cut.
    assert "graceful-shutdown limit reached" in log, log[-3000:]
    running = endless(reached)
    assert wanted <= running
    told = {item[4] for item, raw in read if raw and b"The server is shutting down" in raw}
    assert running <= told, sorted(running - told)

    with sqlite3.connect(database) as db:
        ids = [row[0] for row in db.execute("SELECT request_id FROM modelgate_usage")]
    assert reached <= set(ids), sorted(reached - set(ids))
    assert len(ids) == len(set(ids)), [rid for rid in ids if ids.count(rid) > 1]
