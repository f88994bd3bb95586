"""A finished request leaves no reference cycle behind: refcounting frees it, the cyclic collector has
nothing of it to find (observer.py breaks the scope's cycles at the end; heap.py says why it matters)."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.servers import serve_in_thread

#: Types the gateway makes per request; before the fix each request left one of each in a cycle.
PER_REQUEST = {"Observation", "RequestResponseCycle", "Admission"}


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """``gc.garbage`` holding what each collection finds unreachable (instead of freeing it)."""
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def test_requests_leave_no_cycles_for_the_collector(saved_garbage: list[object]) -> None:
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url, httpx.Client(base_url=url) as client:
        gc.collect()
        saved_garbage.clear()  # what start-up left
        for _ in range(5):
            assert client.get("/ready").status_code == 200
            assert client.get("/v1/models").status_code == 200
            chat = {"model": "no/such-model", "messages": [{"role": "user", "content": "Hi"}]}
            assert client.post("/v1/chat/completions", json=chat).status_code == 404
            assert client.post("/api/ai/no/such-model/chat", json={"messages": chat["messages"]}).status_code == 404
        gc.collect()
        left = Counter(type(o).__name__ for o in saved_garbage)
    assert not {name: n for name, n in left.items() if name in PER_REQUEST}, left.most_common(10)
