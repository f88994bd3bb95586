"""``/metrics`` of ``modelgate serve --workers N``: the totals of every worker (``worker_metrics.py``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from modelgate.metrics import _LATENCY_BUCKETS, HttpRequests
from modelgate.worker_metrics import Publisher, collect
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import serve_subprocess, wait_for
from tests.fakes import PROMPT_TOKENS, Fakes, Reply
from tests.test_http_metrics import OBSERVATIONS, library_exposition

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MODELS = 'modelgate_http_requests_total{method="GET",route="/models",status="200"}'
MODELS_DURATIONS = 'modelgate_http_request_duration_seconds_count{route="/models"}'
CHAT = "/api/ai/acme/one/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
UPSTREAM_OK = 'modelgate_upstream_requests_total{model="acme/one",outcome="ok",provider="ollama"}'
PROMPT = 'modelgate_prompt_tokens_total{model="acme/one",provider="ollama"}'
COMPLETION = 'modelgate_completion_tokens_total{model="acme/one",provider="ollama"}'


def samples(text: str) -> Samples:
    """Every sample but the ``_created`` ones (multiprocess mode has none)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def sample(text: str, wanted: str) -> float | None:
    """One sample by its exposition name and labels (labels in sorted order), None when absent."""
    for name_labels, value in samples(text).items():
        name, labels = name_labels
        rendered = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}" if labels else "")
        if rendered == wanted:
            return value
    return None


def publish(http: HttpRequests, directory: Path) -> None:
    """What a worker does when it stops."""
    publisher = Publisher(http, directory)
    publisher.publish()
    publisher.close()


def write(file: Path, key: str, value: float) -> None:
    values = MmapedDict(str(file))
    values.write_value(key, value, 0.0)
    values.close()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- the mechanism, in process ----------------------------------------------------------------------


def test_two_workers_published_are_what_one_library_registry_would_show(tmp_path: Path) -> None:
    first, second = HttpRequests(_LATENCY_BUCKETS), HttpRequests(_LATENCY_BUCKETS)
    for index, observation in enumerate(OBSERVATIONS):
        (first if index % 2 else second).observe(*observation)
    publish(first, tmp_path)
    publish(second, tmp_path)
    ours, library = samples(collect(tmp_path).decode()), samples(library_exposition())
    assert ours == pytest.approx(library)  # sums of durations added in another order


def test_only_moved_series_are_rewritten_and_a_later_publish_shows_the_new_counts(tmp_path: Path) -> None:
    http = HttpRequests(_LATENCY_BUCKETS)
    publisher = Publisher(http, tmp_path)
    http.observe("/models", "GET", 200, 0.001)
    publisher.publish()
    http.observe("/models", "GET", 200, 0.001)
    http.observe("/health", "GET", 200, 0.001)
    assert sample(collect(tmp_path).decode(), MODELS) == 1  # not yet published
    publisher.publish()
    text = collect(tmp_path).decode()
    assert sample(text, MODELS) == 2
    assert sample(text, MODELS_DURATIONS) == 2
    assert sample(text, 'modelgate_http_requests_total{method="GET",route="/health",status="200"}') == 1
    publisher.close()


def test_a_retired_workers_counts_stay_in_the_total_even_when_its_pid_is_reused(tmp_path: Path) -> None:
    retired = HttpRequests(_LATENCY_BUCKETS)
    for _ in range(3):
        retired.observe("/models", "GET", 200, 0.001)
    publish(retired, tmp_path)
    replacement = HttpRequests(_LATENCY_BUCKETS)  # same process id here: a reused pid
    replacement.observe("/models", "GET", 200, 0.001)
    publish(replacement, tmp_path)
    assert sample(collect(tmp_path).decode(), MODELS) == 4


def test_a_dead_workers_gauge_is_dropped_and_its_counters_kept(tmp_path: Path) -> None:
    gone, alive = dead_pid(), os.getpid()
    gauge = mmap_key("modelgate_streams_in_flight", "modelgate_streams_in_flight", [], [], "streams")
    counter = mmap_key("modelgate_prompt_tokens", "modelgate_prompt_tokens_total", [], [], "tokens")
    for pid, streams in ((gone, 3.0), (alive, 2.0)):
        write(tmp_path / f"gauge_livesum_{pid}.db", gauge, streams)
        write(tmp_path / f"counter_{pid}.db", counter, 10.0)
    text = collect(tmp_path).decode()
    assert sample(text, "modelgate_streams_in_flight") == 2
    assert sample(text, "modelgate_prompt_tokens_total") == 20
    assert not (tmp_path / f"gauge_livesum_{gone}.db").exists()


# --- modelgate serve --workers 2 ----------------------------------------------------------------------


def models_answered_by_worker(directory: Path) -> dict[int, float]:
    """GET /models counts each worker has published, by worker pid (from the file names)."""
    counts: dict[int, float] = {}
    for file in directory.glob("counter_http-*.db"):
        pid = int(file.name.split("-")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(file)):
            if '"/models"' in key and '"GET"' in key and '"200"' in key:
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def scrape(url: str) -> str:
    response = httpx.get(url + "/metrics", timeout=10)  # a new connection each time: any worker may answer
    assert response.status_code == 200
    return response.text


@pytest.mark.timeout(300)  # two workers starting on a loaded machine
def test_two_workers_one_metrics_whichever_worker_answers_and_after_one_retires(tmp_path: Path, fakes: Fakes) -> None:
    directory = tmp_path / "metrics"
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    env = {**fakes.env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    fakes.ollama.default = Reply(tokens=["a", "b", "c"])
    with serve_subprocess(["--config", str(path), "--workers", "2"], tmp_path, env=env) as served:
        wait_for(lambda: answers(served.url + "/health"), "the workers to listen")  # not /models: counted below
        workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", served.log())}
        sent = chats = 0

        def get_models_or_chat(index: int) -> int:
            with httpx.Client(timeout=10) as client:  # its own connection
                if index % 5 == 0:
                    return client.post(served.url + CHAT, json=BODY).status_code
                return client.get(served.url + "/models").status_code

        # Enough concurrent connections that both workers answer some (each publishes within a second).
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                statuses = list(pool.map(get_models_or_chat, range(50)))
                assert statuses == [200] * 50
                sent, chats = sent + 40, chats + 10
                answered = wait_for(lambda: models_answered_by_worker(directory), "the workers to publish")
                if len(answered) == 2:
                    break

        def all_published() -> dict[int, float] | None:
            answered = models_answered_by_worker(directory)
            return answered if sum(answered.values()) == sent else None

        answered = wait_for(all_published, "every count to be published")
        assert len(answered) == 2 and all(count > 0 for count in answered.values())
        workers |= {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", served.log())}
        assert set(answered) <= workers  # the files are the serving workers'

        for _ in range(12):
            text = scrape(served.url)
            assert sample(text, MODELS) == sent
            assert sample(text, MODELS_DURATIONS) == sent
            assert sample(text, "modelgate_streams_in_flight") == 0
            # The library's own series (mmap-backed): one attempt and its tokens per chat, from both workers.
            assert sample(text, UPSTREAM_OK) == chats
            assert sample(text, PROMPT) == chats * PROMPT_TOKENS
            assert sample(text, COMPLETION) == chats * 3

        # A worker retires (as in a SIGHUP rolling restart, one at a time): its counts stay, once; its gauge goes.
        retired = next(iter(answered))
        os.kill(retired, signal.SIGTERM)
        wait_for(lambda: f"Finished server process [{retired}]" in served.log(), "the worker to stop")
        wait_for(
            lambda: scrape(served.url) and not (directory / f"gauge_livesum_{retired}.db").exists(),
            "the retired worker's gauge to be dropped",
        )
        for _ in range(6):
            text = scrape(served.url)
            assert sample(text, MODELS) == sent
            assert sample(text, UPSTREAM_OK) == chats
