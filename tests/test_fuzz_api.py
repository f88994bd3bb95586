"""Schemathesis against the running service's ``/openapi.json``: every route, valid and invalid input.

A real server on loopback, the fake upstreams behind it (they answer every model), no API keys (so
the chat routes run through to an upstream). For every operation, Hypothesis draws cases from the
schema — positive (fits it) and negative (breaks it) — with a fixed seed and a bounded count, and each
response must be: not a 5xx, answered before a timeout (no hang), and, when an error, the documented
error shape with no traceback. The figures of a run are in the README ("Fuzzing").

The schema the fuzzer gets is exactly the one the service serves, the AI SDK chat routes' body included
(``routes/chat.AI_SDK_REQUEST_BODY``: the routes read the raw bytes, so it is written out there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.fakes import Fakes
from tests.fuzzing import fuzz as fuzz_settings
from tests.servers import serve_in_thread

#: Cases per strategy: 10 operations, the chat routes drawn twice (any path, a real model), two modes.
EXAMPLES = 30
#: Sequences of up to 5 linked calls in the stateful run.
STATEFUL_SCENARIOS = 25
#: Seconds a single response may take: far above the fake upstreams' answers, so only a hang trips it.
HANG = 20.0

#: The body ``POST /api/ai/.../chat`` reads (README, "Chat endpoints"): AI SDK v4 ``content`` or v5 ``parts``.
#: A model of each provider, so that generated chat requests also reach an upstream (a fake).
REAL_ROUTES = {
    "/api/ai/{first}/{second}/chat": {"first": "ollama", "second": "tiny"},
    "/api/ai/{provider}/{publisher}/{name}/chat": {"provider": "huggingface", "publisher": "acme", "name": "hf"},
}


@pytest.fixture(scope="module")
def service(_fake_servers: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    config = write_catalogue(
        directory / "catalogue.toml",
        model_toml("acme", "tiny"),
        model_toml("acme", "hf", provider="huggingface", upstream="acme/hf"),
        model_toml("acme", "routed", provider="openrouter", upstream="acme/routed"),
    )
    _fake_servers.reset()
    settings = Settings(config_path=config, probe_interval=0, **_fake_servers.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings)) as url:
        yield url
    _fake_servers.reset()


@pytest.fixture(scope="module")
def schema(service: str) -> Any:
    raw = httpx.get(f"{service}/openapi.json").json()
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.location = f"{service}/openapi.json"
    return loaded


def _operations(schema: Any) -> list[Any]:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, "every route of /openapi.json is fuzzed"
    return operations


def _check(service: str, session: requests.Session, case: Any, tally: dict[str, int]) -> None:
    try:
        response = case.call(base_url=service, session=session, timeout=HANG)
    except requests.Timeout:
        pytest.fail(f"no answer within {HANG} s (a hang): {case.as_curl_command()}")
    tally["cases"] += 1
    _validate(case, response)


def _validate(case: Any, response: Any) -> None:
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        body = response.json()  # an error is always JSON in the documented shape
        if case.operation.path.startswith("/v1/"):
            assert isinstance(body["error"]["message"], str), body
        else:
            assert body["statusCode"] == response.status_code and isinstance(body["statusMessage"], str), body


def _fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
    @fuzz_settings(EXAMPLES)
    @given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    run()


def _with_real_model(case: Any) -> Any:
    """A generated /v1 body naming a served model, so that it gets past the model lookup."""
    if isinstance(case.body, dict):
        case.body["model"] = "acme/tiny"
    return case


#: Operations without a parameter or a body, or whose one parameter is any string in the path:
#: there is nothing a negative case could break.
NOTHING_TO_BREAK = {
    "GET /models",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /health",
    "GET /ready",
    "GET /api/status",
    "GET /admin/keys",
}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_route_answers_500_or_hangs(service: str, schema: Any, mode: GenerationMode) -> None:
    tally = {"cases": 0}
    strategies: list[tuple[str, st.SearchStrategy[Any]]] = []
    for operation in _operations(schema):
        label = operation.label
        strategies.append((label, operation.as_strategy(generation_mode=mode)))
        if operation.path in REAL_ROUTES:
            real = operation.as_strategy(generation_mode=mode, path_parameters=REAL_ROUTES[operation.path])
            strategies.append((label, real))
        if operation.path in ("/v1/chat/completions", "/v1/responses"):
            strategies.append((label, operation.as_strategy(generation_mode=mode).map(_with_real_model)))

    unbreakable = set()
    with requests.Session() as session:
        for label, strategy in strategies:
            try:
                _fuzz(strategy, lambda case: _check(service, session, case, tally))
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, label
                unbreakable.add(label)
    assert unbreakable <= NOTHING_TO_BREAK
    # Cases ran for every strategy that has any (a schema or generation problem would leave few).
    assert tally["cases"] >= (len(strategies) - len(unbreakable)) * 5, tally
    print(f"\nschemathesis {mode}: {tally['cases']} requests, {len(strategies)} strategies")


def test_stateful_sequences_follow_the_links_without_a_500_or_a_hang(service: str, schema: Any) -> None:
    """Schemathesis infers links from the schema (``GET /v1/models`` gives the ids ``GET /v1/models/{model_id}``
    takes) and runs sequences along them: a listed model must then be fetchable, never a 500."""
    tally = {"cases": 0, "listed model fetched": 0}
    session = requests.Session()
    machine = schema.as_state_machine()
    links = [name for name in dir(machine) if "GET_v1_models___200" in name]
    assert links, "the inferred link GET /v1/models -> GET /v1/models/{model_id}"

    class Sequences(machine):  # type: ignore[misc,valid-type]
        def call(self, case: Any, **kwargs: Any) -> Any:
            try:
                return case.call(base_url=service, session=session, timeout=HANG)
            except requests.Timeout:
                pytest.fail(f"no answer within {HANG} s (a hang): {case.as_curl_command()}")

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            tally["cases"] += 1
            if case.operation.label == "GET /v1/models/{model_id}" and response.status_code == 200:
                tally["listed model fetched"] += 1  # an id only the link gives: random ones are 404
            _validate(case, response)

    with session:
        Sequences.run(settings=settings(fuzz_settings(STATEFUL_SCENARIOS), stateful_step_count=5))
    assert tally["cases"] >= STATEFUL_SCENARIOS and tally["listed model fetched"] > 0, tally
    print(f"\nschemathesis stateful: {tally} in {STATEFUL_SCENARIOS} scenarios")


def test_the_fuzzed_schema_is_the_served_one(service: str, schema: Any) -> None:
    served = httpx.get(f"{service}/openapi.json").json()
    assert sorted(served["paths"]) == sorted({op.path for op in _operations(schema)})  # a path may have several methods
    assert json.dumps(schema.raw_schema["components"], sort_keys=True) == json.dumps(
        served["components"], sort_keys=True
    )
    for path in REAL_ROUTES:  # the chat routes document their body, though they read it themselves
        body = served["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["messages"] and "parts" in body["properties"]["messages"]["items"]["properties"]
