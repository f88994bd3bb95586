"""API keys: the keys file, constant-time identification, the access policy, and 401s on a real socket."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.auth import (
    ANONYMOUS,
    ApiKey,
    KeyRing,
    Principal,
    access_notice,
    is_protected_path,
    key_digest,
    load_keyring,
    load_keys_file,
    may_call,
    visible_models,
)
from modelgate.catalogue import Catalogue, default_catalogue_path, load_catalogue
from modelgate.errors import CatalogueError, Unauthorized
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import run_cli, serve_subprocess, wait_for
from tests.fakes import Fakes
from tests.servers import serve_in_thread

FULL_KEY = "mg-test-full-0123456789abcdef"
QWEN_KEY = "mg-test-qwen-fedcba9876543210"
HASHED_KEY = "mg-test-hashed-aaaabbbbccccdddd"
ENV_KEY = "mg-test-env-5555666677778888"

MODELS = (
    model_toml("acme", "tiny"),
    model_toml("acme", "big"),
    model_toml("qwen", "small", provider="openrouter", upstream="qwen/small"),
    model_toml("qwen", "large", provider="openrouter", upstream="qwen/large"),
)

KEYS_TOML = f"""
[[keys]]
name = "full"
key = "{FULL_KEY}"

[[keys]]
name = "qwen-only"
key = "{QWEN_KEY}"
models = ["qwen/*"]
requests_per_minute = 5
concurrent_streams = 2

[[keys]]
name = "hashed"
sha256 = "{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}"
models = ["acme/tiny", "qwen/large"]
"""


def write_files(tmp_path: Path, keys_toml: str = KEYS_TOML, keys_file: str = "keys.toml") -> Path:
    (tmp_path / "keys.toml").write_text(keys_toml, encoding="utf-8")
    return write_catalogue(tmp_path / "catalogue.toml", *MODELS, header=f'[server]\nkeys_file = "{keys_file}"\n')


def keyring_for(tmp_path: Path, keys_toml: str, **settings: object) -> KeyRing:
    catalogue = load_catalogue(write_files(tmp_path, keys_toml))
    return load_keyring(Settings(**settings), catalogue)  # type: ignore[arg-type]


# --- the keys file ---------------------------------------------------------------------------------


def test_keys_file_is_read_relative_to_the_catalogue(tmp_path: Path) -> None:
    ring = keyring_for(tmp_path, KEYS_TOML)
    assert [k.name for k in ring.keys] == ["full", "qwen-only", "hashed"]
    qwen = ring.keys[1]
    assert qwen.models == ("qwen/*",)
    assert (qwen.requests_per_minute, qwen.concurrent_streams) == (5, 2)
    assert ring.keys[0].models == ("*",)
    assert ring.identify(HASHED_KEY.encode()) is ring.keys[2]
    assert ring.identify(FULL_KEY.encode()) is ring.keys[0]


def test_a_ring_of_many_keys_finds_each_key_and_no_other() -> None:
    """Run-time keys can number tens of thousands: each is one lookup by digest, and only its own key finds it."""
    keys = tuple(ApiKey(key_digest(f"mg-many-{i:06d}"), f"k{i}") for i in range(20_000))
    ring = KeyRing(keys)
    assert ring.identify(b"mg-many-012345") is keys[12345]
    assert ring.identify(b"mg-many-019999") is keys[-1]
    assert ring.identify(b"mg-many-020000") is None
    assert ring.identify(keys[7].digest) is None  # the digest itself is not the key
    assert ring.identify(b"") is None


def test_environment_keys_are_added_and_the_file_entry_wins_for_a_shared_key(tmp_path: Path) -> None:
    ring = keyring_for(tmp_path, KEYS_TOML, api_keys=(ENV_KEY, QWEN_KEY))
    assert [k.name for k in ring.keys] == ["full", "qwen-only", "hashed", "env-1"]
    env = ring.identify(ENV_KEY.encode())
    assert env is not None and env.models == ("*",) and env.requests_per_minute is None
    assert ring.identify(QWEN_KEY.encode()) is ring.keys[1]


def test_only_environment_keys(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", *MODELS))
    ring = load_keyring(Settings(api_keys=(ENV_KEY,)), catalogue)
    assert ring.enabled and ring.identify(ENV_KEY.encode()) is not None
    assert not load_keyring(Settings(), catalogue).enabled


def test_no_plaintext_key_is_kept_in_memory(tmp_path: Path) -> None:
    ring = keyring_for(tmp_path, KEYS_TOML)
    for key in ring.keys:
        assert FULL_KEY not in repr(key) and key.digest.hex() not in repr(key)
        assert len(key.key_id) == 12 and key.digest.hex().startswith(key.key_id)


@pytest.mark.parametrize(
    ("keys_toml", "message"),
    [
        ('[[keys]]\nname = "x"\n', r"keys\[0\] \(x\): \(entry\): set exactly one of 'key' and 'sha256'"),
        (
            f'[[keys]]\nkey = "{FULL_KEY}"\nsha256 = "{"0" * 64}"\n',
            r"keys\[0\]: \(entry\): set exactly one of 'key' and 'sha256'",
        ),
        ('[[keys]]\nsha256 = "abc"\n', r"keys\[0\]: sha256: must be 64 hex digits"),
        ('[[keys]]\nkey = "has space"\n', r"keys\[0\]: key: must be non-empty printable ASCII"),
        (f'[[keys]]\nkey = "{FULL_KEY}"\nrpm = 5\n', r"keys\[0\]: rpm: unknown key"),
        (f'[[keys]]\nkey = "{FULL_KEY}"\nrequests_per_minute = 0\n', r"keys\[0\]: requests_per_minute: "),
        (f'[[keys]]\nkey = "{FULL_KEY}"\nmodels = []\n', r"keys\[0\]: models: "),
        (
            f'[[keys]]\nname = "typo"\nkey = "{FULL_KEY}"\nmodels = ["qwen/Qwen*"]\n',
            r"keys\[0\] \(typo\): models: 'qwen/Qwen\*' matches no catalogue model",
        ),
        (
            f'[[keys]]\nkey = "{FULL_KEY}"\n[[keys]]\nsha256 = "{hashlib.sha256(FULL_KEY.encode()).hexdigest()}"\n',
            r"keys\[1\] \(key-[0-9a-f]{12}\): the same key is listed twice",
        ),
        (
            f'[[keys]]\nname = "a"\nkey = "{FULL_KEY}"\n[[keys]]\nname = "a"\nkey = "{QWEN_KEY}"\n',
            r"keys\[1\] \(a\): name: 'a' is used by another key",
        ),
        ("[[keys]\n", r"not valid TOML"),
        # A RecursionError and a ValueError (Python's 4300-digit limit) before: tracebacks from check-config and serve.
        ("x = " + "[" * 600 + "]" * 600 + "\n", r"not valid TOML: values nested too deeply$"),
        ("x = " + "1" * 5000 + "\n", r"not valid TOML: Exceeds the limit \(4300 digits\)"),
        ('keys = "x"\n', r"keys: "),
    ],
)
def test_invalid_keys_file_refuses_with_a_clear_message(tmp_path: Path, keys_toml: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=message) as caught:
        keyring_for(tmp_path, keys_toml)
    assert str(tmp_path / "keys.toml") in caught.value.message
    assert FULL_KEY not in caught.value.message  # a key is never echoed, not even in a config error


def test_missing_keys_file_names_the_catalogue(tmp_path: Path) -> None:
    path = write_files(tmp_path, keys_file="nope.toml")
    with pytest.raises(CatalogueError, match=r"nope\.toml: keys file not found \(named by \[server\] keys_file in"):
        create_app(Settings(config_path=path))


def test_an_invalid_keys_file_keeps_the_app_from_starting(tmp_path: Path) -> None:
    path = write_files(tmp_path, '[[keys]]\nname = "x"\n')
    with pytest.raises(CatalogueError):
        create_app(Settings(config_path=path))


def test_reload_swaps_keys_and_keeps_the_old_ones_on_a_broken_file(tmp_path: Path) -> None:
    path = write_files(tmp_path)
    app = create_app(Settings(config_path=path))
    state = app.state.gateway
    assert state.keys.identify(QWEN_KEY.encode()) is not None
    (tmp_path / "keys.toml").write_text(f'[[keys]]\nkey = "{ENV_KEY}"\n', encoding="utf-8")
    state.reload()
    assert state.keys.identify(QWEN_KEY.encode()) is None
    assert state.keys.identify(ENV_KEY.encode()) is not None
    (tmp_path / "keys.toml").write_text("[[keys]]\n", encoding="utf-8")
    with pytest.raises(CatalogueError):
        state.reload()
    assert state.keys.identify(ENV_KEY.encode()) is not None


# --- identification and policy -------------------------------------------------------------------


def test_authenticate() -> None:
    key = ApiKey(digest=key_digest(FULL_KEY), name="full")
    ring = KeyRing((key,))
    assert ring.authenticate(b"Bearer " + FULL_KEY.encode()) == Principal(key)
    assert ring.authenticate(b"bearer  " + FULL_KEY.encode() + b" ") == Principal(key)
    for header, message in [
        (None, "Missing API key"),
        (b"", "Missing API key"),
        (b"Basic " + FULL_KEY.encode(), "Malformed Authorization header"),
        (b"Bearer", "Malformed Authorization header"),
        (FULL_KEY.encode(), "Malformed Authorization header"),
        (b"Bearer " + FULL_KEY.encode()[:-1], "Invalid API key"),
        (b"Bearer " + FULL_KEY.encode() + b"x", "Invalid API key"),
    ]:
        with pytest.raises(Unauthorized, match=message) as caught:
            ring.authenticate(header)
        assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="modelgate"'}


def test_no_keys_means_anonymous() -> None:
    assert KeyRing().authenticate(None) is ANONYMOUS
    assert KeyRing().authenticate(b"Bearer whatever") is ANONYMOUS


def test_may_call_and_visible_models_agree_for_every_key(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_files(tmp_path))
    ring = load_keyring(Settings(), catalogue)
    expected = {
        "full": {"acme/tiny", "acme/big", "qwen/small", "qwen/large"},
        "qwen-only": {"qwen/small", "qwen/large"},
        "hashed": {"acme/tiny", "qwen/large"},
    }
    for key in ring.keys:
        principal = Principal(key)
        listed = {m.id for m in visible_models(principal, catalogue)}
        assert listed == expected[key.name]
        assert listed == {m.id for m in catalogue.models if may_call(principal, m.id)}
    assert len(visible_models(ANONYMOUS, catalogue)) == 4


def test_globs_are_case_sensitive_and_whole_id() -> None:
    principal = Principal(ApiKey(digest=b"x" * 32, name="k", models=("qwen/*",)))
    assert may_call(principal, "qwen/large")
    assert not may_call(principal, "Qwen/large")
    assert not may_call(principal, "notqwen/large")


@pytest.mark.parametrize(
    ("path", "protected"),
    [
        ("/api/ai/ollama/tiny/chat", True),
        ("/v1", True),
        ("/v1/models", True),
        ("/v1/chat/completions", True),
        ("/v1x", False),
        ("/models", False),
        ("/api/models", False),
        ("/health", False),
        ("/ready", False),
        ("/", False),
        ("/docs", False),
        ("/openapi.json", False),
    ],
)
def test_protected_paths(path: str, protected: bool) -> None:
    assert is_protected_path(path) is protected


# --- over a real socket --------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings(config_path=write_files(tmp_path)))
    with serve_in_thread(app) as base:
        yield base


@pytest.mark.parametrize("path", ["/models", "/api/models", "/openapi.json", "/docs"])
def test_public_paths_need_no_key(keyed: str, path: str) -> None:
    assert httpx.get(keyed + path).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/nonexistent", "/v1"])
def test_v1_without_a_key_is_401_in_openai_shape(keyed: str, path: str) -> None:
    response = httpx.get(keyed + path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="modelgate"'
    assert response.json() == {
        "error": {
            "message": "Missing API key: send 'Authorization: Bearer <key>'",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_chat_with_an_unknown_key_is_401_in_seed_shape(keyed: str) -> None:
    response = httpx.post(
        keyed + "/api/ai/ollama/tiny/chat",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer not-a-key"},
    )
    assert response.status_code == 401
    assert response.json() == {"statusCode": 401, "statusMessage": "Invalid API key"}
    assert "not-a-key" not in response.text


def test_a_cors_preflight_needs_no_key(keyed: str) -> None:
    response = httpx.options(
        keyed + "/v1/chat/completions",
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" in response.headers


def test_a_401_carries_cors_headers_so_a_browser_can_read_it(keyed: str) -> None:
    response = httpx.get(keyed + "/v1/models", headers={"Origin": "https://example.org"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"


def test_without_keys_v1_is_open(tmp_path: Path) -> None:
    app = create_app(Settings(config_path=write_catalogue(tmp_path / "c.toml", *MODELS)))
    with serve_in_thread(app) as base:
        assert httpx.get(base + "/v1/nonexistent").status_code == 404


def test_the_readme_keys_file_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (tmp_path / "keys.toml").write_text(readme.split("```toml\n# keys.toml\n", 1)[1].split("```", 1)[0])
    catalogue = load_catalogue()
    ring = KeyRing(tuple(load_keys_file(tmp_path / "keys.toml", catalogue)))
    assert [k.name for k in ring.keys] == ["playground", "ci"]
    assert ring.identify(b"mg-playground-secret") is ring.keys[0]
    assert ring.identify(b"mg-ci-change-me") is ring.keys[1]
    assert (ring.keys[0].requests_per_minute, ring.keys[0].concurrent_streams) == (60, 4)


# --- end to end: the default catalogue, keys, both chat surfaces, the fake upstreams ---------------

E2E_KEYS = {
    "full": "mg-e2e-full-0000111122223333",
    "qwen": "mg-e2e-qwen-4444555566667777",
    "mixed": "mg-e2e-mixed-88889999aaaabbbb",
}
E2E_KEYS_TOML = f"""
[[keys]]
name = "full"
key = "{E2E_KEYS["full"]}"

[[keys]]
name = "qwen"
sha256 = "{hashlib.sha256(E2E_KEYS["qwen"].encode()).hexdigest()}"
models = ["qwen/*"]

[[keys]]
name = "mixed"
key = "{E2E_KEYS["mixed"]}"
models = ["google/gemma-2-27b-it", "openrouter/*", "ollama/rwkv-6-world"]
"""
MESSAGES = [{"role": "user", "content": "Hi!"}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def default_with_keys(tmp_path: Path) -> Catalogue:
    (tmp_path / "keys.toml").write_text(E2E_KEYS_TOML, encoding="utf-8")
    text = default_catalogue_path().read_text(encoding="utf-8") + '\n[server]\nkeys_file = "keys.toml"\n'
    (tmp_path / "catalogue.toml").write_text(text, encoding="utf-8")
    return load_catalogue(tmp_path / "catalogue.toml")


@pytest.fixture
def e2e(fakes: Fakes, default_with_keys: Catalogue) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, default_with_keys)) as url:
        yield url


def test_for_every_key_listed_equals_callable_on_both_surfaces(e2e: str, default_with_keys: Catalogue) -> None:
    seen_refusal = seen_call = False
    with httpx.Client(base_url=e2e, timeout=30) as client:
        for name, key in E2E_KEYS.items():
            listing = client.get("/v1/models", headers=bearer(key))
            assert listing.status_code == 200
            listed = {m["id"] for m in listing.json()["data"]}
            assert listed, name
            for model in default_with_keys.models:
                openai = client.post(
                    "/v1/chat/completions", headers=bearer(key), json={"model": model.id, "messages": MESSAGES}
                )
                chat = client.post(model.endpoint, headers=bearer(key), json={"messages": MESSAGES})
                retrieve = client.get(f"/v1/models/{model.id}", headers=bearer(key))
                if model.id in listed:
                    assert (openai.status_code, chat.status_code, retrieve.status_code) == (200, 200, 200), model.id
                    seen_call = True
                else:
                    assert (openai.status_code, chat.status_code, retrieve.status_code) == (403, 403, 404), model.id
                    seen_refusal = True
    assert seen_call and seen_refusal


def test_403_shapes(e2e: str, fakes: Fakes) -> None:
    key = bearer(E2E_KEYS["qwen"])
    seed = httpx.post(e2e + "/api/ai/openrouter/deepseek-chat/chat", headers=key, json={"messages": MESSAGES})
    assert seed.status_code == 403
    assert seed.json() == {
        "statusCode": 403,
        "statusMessage": "This API key may not use the model 'openrouter/deepseek-chat'",
        "data": {"model": "openrouter/deepseek-chat"},
    }
    openai = httpx.post(
        e2e + "/v1/chat/completions", headers=key, json={"model": "openrouter/deepseek-chat", "messages": MESSAGES}
    )
    assert openai.status_code == 403
    assert openai.json() == {
        "error": {
            "message": "This API key may not use the model 'openrouter/deepseek-chat'",
            "type": "permission_error",
            "param": None,
            "code": "model_not_allowed",
        }
    }
    assert not fakes.openrouter.requests  # refused before any upstream call


def test_401_on_chat_in_seed_shape_and_nothing_reaches_upstream(e2e: str, fakes: Fakes) -> None:
    response = httpx.post(e2e + "/api/ai/qwen/Qwen2.5-72B-Instruct/chat", json={"messages": MESSAGES})
    assert response.status_code == 401
    missing = "Missing API key: send 'Authorization: Bearer <key>'"
    assert response.json() == {"statusCode": 401, "statusMessage": missing}
    assert not fakes.huggingface.requests


def test_no_key_appears_in_responses_or_logs(e2e: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    bodies: list[str] = []
    with httpx.Client(base_url=e2e, timeout=30) as client:
        for key in E2E_KEYS.values():
            for path in ("/v1/models", "/v1/models/qwen/Qwen2.5-72B-Instruct", "/v1/nope"):
                response = client.get(path, headers=bearer(key))
                bodies.append(str(response.headers) + response.text)
            chat = client.post("/api/ai/openrouter/deepseek-chat/chat", headers=bearer(key), json={"messages": []})
            bodies.append(str(chat.headers) + chat.text)
            almost = key[:-1] + "x"  # an unknown key, one character off
            bad = client.get("/v1/models", headers=bearer(almost))
            assert bad.status_code == 401
            bodies.append(str(bad.headers) + bad.text)
    assert sum(r.name == "modelgate.access" for r in caplog.records) >= 15  # the request log was captured
    captured = caplog.text + "".join(bodies)
    for key in E2E_KEYS.values():
        assert key not in captured
        assert key[:-1] not in captured


# --- modelgate serve: what it says about access, and a broken keys file -------------------------------


def test_serve_without_keys_says_it_is_open_and_on_loopback(tmp_path: Path) -> None:
    with serve_subprocess([], tmp_path) as served:
        assert served.url.startswith("http://127.0.0.1:")
        wait_for(lambda: "the service is open, so it is bound to loopback (127.0.0.1) only" in served.log(), "notice")


def test_serve_with_keys_says_they_are_required(tmp_path: Path) -> None:
    with serve_subprocess([], tmp_path, env={"MODELGATE_API_KEYS": f"{FULL_KEY},{QWEN_KEY}"}) as served:
        assert served.url.startswith("http://127.0.0.1:")  # keys do not widen the default bind
        assert httpx.get(served.url + "/v1/models").status_code == 401
        models = httpx.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {QWEN_KEY}"})
        assert models.status_code == 200
        log = served.log()
    assert "API keys required on /api/ai/... and /v1/... (2 configured)" in log
    assert "the service is open" not in log
    assert FULL_KEY not in log and QWEN_KEY not in log


def test_access_notice_for_an_exposed_open_service() -> None:
    level, message = access_notice(KeyRing(), "0.0.0.0")
    assert level == logging.WARNING
    assert message.startswith("no API keys configured and bound to 0.0.0.0: anyone who can reach this port")
    assert access_notice(KeyRing(), "::1")[1].startswith("no API keys configured: the service is open")
    assert access_notice(KeyRing(), "localhost")[1].startswith("no API keys configured: the service is open")


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_broken_keys_file_is_one_message_and_exit_1(tmp_path: Path, command: str) -> None:
    path = write_files(tmp_path, f'[[keys]]\nkey = "{FULL_KEY}"\nmodels = ["nobody/*"]\n')
    args = ("serve", "--port", "0", "--config", str(path)) if command == "serve" else ("check-config", str(path))
    result = run_cli(*args, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{tmp_path / 'keys.toml'}: keys[0] (key-{key_digest(FULL_KEY).hex()[:12]}): "
        "models: 'nobody/*' matches no catalogue model (models are 'publisher/name')"
    )
    assert "Traceback" not in result.stderr + result.stdout
