"""The collector thresholds ``modelgate serve`` sets once its app has started (``heap.py``), and only then."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import httpx
import pytest

from modelgate.app import create_app
from modelgate.heap import OLDER, YOUNG
from modelgate.settings import Settings
from tests.servers import serve_in_thread


@pytest.fixture
def default_thresholds() -> Iterator[tuple[int, int, int]]:
    """CPython's own thresholds during the test, and whatever the test process had afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*before)


def test_a_serving_app_sets_the_collector_once_started(default_thresholds: tuple[int, int, int]) -> None:
    app = create_app(Settings(probe_interval=0), tune_gc=True)
    assert gc.get_threshold() == default_thresholds  # building the app changes nothing
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        assert gc.get_threshold() == (YOUNG, OLDER, OLDER)


def test_an_app_not_serving_leaves_the_collector_alone(default_thresholds: tuple[int, int, int]) -> None:
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        assert gc.get_threshold() == default_thresholds
