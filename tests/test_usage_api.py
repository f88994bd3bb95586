"""``GET /api/usage``, ``modelgate usage`` and the catalogue's prices (``/v1/models``), end to end."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue, parse_catalogue
from modelgate.errors import CatalogueError
from modelgate.settings import Settings
from tests.catalogue_files import catalogue_toml, model_toml, write_catalogue
from tests.cli_process import run_cli
from tests.fakes import Fakes, Reply
from tests.servers import serve_in_thread
from tests.test_ledger import BODY, PRICED, TINY

ALICE = "mg-alice-key-6a1f0c"
BOB = "mg-bob-key-93d2e7"
ADMIN = "mg-admin-key-0b7e44"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def settings_for(fakes: Fakes, tmp_path: Path, **extra: object) -> Settings:
    path = write_catalogue(tmp_path / "catalogue.toml", *PRICED)
    return Settings(
        **fakes.settings_overrides(),
        config_path=path,
        database_url=f"sqlite:///{tmp_path / 'usage.sqlite3'}",
        probe_interval=0,
        **extra,  # type: ignore[arg-type]
    )


def test_a_key_sees_its_own_usage_and_the_admin_everything(fakes: Fakes, tmp_path: Path) -> None:
    settings = settings_for(fakes, tmp_path, api_keys=(ALICE, BOB), admin_key=ADMIN)
    fakes.ollama.script(*[Reply(tokens=["a", "b"], usage=(10, 2)) for _ in range(3)])
    fakes.openrouter.script(Reply(tokens=["c"], usage=(100, 50)))
    with serve_in_thread(create_app(settings, load_catalogue(settings.config_path))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for key in (ALICE, ALICE, BOB):
                assert client.post(TINY, json=BODY, headers=bearer(key)).status_code == 200
            v1 = {"model": "acme/think", "messages": BODY["messages"]}
            assert client.post("/v1/chat/completions", json=v1, headers=bearer(BOB)).status_code == 200

            alice = client.get("/api/usage", headers=bearer(ALICE)).json()
            assert alice["totals"] == {
                "requests": 2,
                "prompt_tokens": 20,
                "completion_tokens": 4,
                "reasoning_tokens": 0,
                "cached_tokens": 0,
                "cost": pytest.approx(2 * (10 * 0.15 + 2 * 0.6) / 1e6),
            }
            assert {r["key_id"] for r in alice["records"]} == {key_id(ALICE)}
            assert alice["filters"]["key"] == key_id(ALICE)
            assert client.get("/api/usage", params={"key": key_id(BOB)}, headers=bearer(ALICE)).status_code == 403

            everything = client.get("/api/usage", headers=bearer(ADMIN)).json()
            assert everything["totals"]["requests"] == 4
            groups = {(g["key_id"], g["model"]): g["requests"] for g in everything["groups"]}
            assert groups == {
                (key_id(ALICE), "acme/tiny"): 2,
                (key_id(BOB), "acme/tiny"): 1,
                (key_id(BOB), "acme/think"): 1,
            }
            only_bob_think = client.get(
                "/api/usage", params={"key": key_id(BOB), "provider": "openrouter"}, headers=bearer(ADMIN)
            ).json()
            assert only_bob_think["totals"]["prompt_tokens"] == 100
            assert only_bob_think["totals"]["cost"] == pytest.approx((100 * 1 + 50 * 4) / 1e6)
            by_model = client.get("/api/usage", params={"model": "acme/think"}, headers=bearer(ADMIN)).json()
            assert [r["model"] for r in by_model["records"]] == ["acme/think"]

            newest = everything["records"][0]["ts"]
            later = client.get("/api/usage", params={"from": "2999-01-01T00:00:00Z"}, headers=bearer(ADMIN)).json()
            assert later["totals"]["requests"] == 0 and later["totals"]["cost"] is None
            earlier = client.get("/api/usage", params={"to": newest}, headers=bearer(ADMIN)).json()
            assert earlier["totals"]["requests"] == 3  # "to" is exclusive: the newest is left out
            limited = client.get("/api/usage", params={"limit": 1}, headers=bearer(ADMIN)).json()
            assert len(limited["records"]) == 1 and limited["totals"]["requests"] == 4

            assert client.get("/api/usage").status_code == 401
            assert client.get("/api/usage", headers=bearer("not-a-key")).status_code == 401
            bad_time = client.get("/api/usage", params={"from": "yesterday"}, headers=bearer(ADMIN))
            assert bad_time.status_code == 400 and "from" in bad_time.json()["statusMessage"]
            assert client.get("/api/usage", params={"limit": 5000}, headers=bearer(ADMIN)).status_code == 400

        # modelgate usage: the same answer as a table, through the API
        table = run_cli("usage", "--url", url, "--api-key", ADMIN)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert any(key_id(BOB) in line and "acme/think" in line and "0.00030000" in line for line in lines)
        assert any(line.strip("│ ").startswith("total") and " 4 " in line for line in lines)
        mine = run_cli("usage", "--url", url, "--json", env={"MODELGATE_API_KEY": BOB})
        assert orjson.loads(mine.stdout)["totals"]["requests"] == 2
        refused = run_cli("usage", "--url", url, "--api-key", "wrong")
        assert refused.returncode == 1 and "401" in refused.stderr


def test_an_open_service_shows_all_usage_and_an_admin_key_alone_closes_it(fakes: Fakes, tmp_path: Path) -> None:
    fakes.ollama.script(Reply(tokens=["a"], usage=(1, 1)), Reply(tokens=["a"], usage=(1, 1)))
    with serve_in_thread(create_app(settings_for(fakes, tmp_path))) as url:
        assert httpx.post(url + TINY, json=BODY).status_code == 200
        open_usage = httpx.get(url + "/api/usage").json()
    assert open_usage["totals"]["requests"] == 1 and open_usage["records"][0]["key_id"] is None
    with serve_in_thread(create_app(settings_for(fakes, tmp_path, admin_key=ADMIN))) as url:
        assert httpx.post(url + TINY, json=BODY).status_code == 200  # chat stays open
        assert httpx.get(url + "/api/usage").status_code == 401
        assert httpx.get(url + "/api/usage", headers=bearer(ADMIN)).json()["totals"]["requests"] == 2


@pytest.mark.parametrize("name", ["key", "model", "provider"])
def test_a_control_character_in_a_filter_is_a_400(fakes: Fakes, tmp_path: Path, name: str) -> None:
    # PostgreSQL refuses a NUL in text (a 500 there); no id holds a control character anyway.
    with serve_in_thread(create_app(settings_for(fakes, tmp_path))) as url:
        answer = httpx.get(url + "/api/usage", params={name: "acme/ti\x00ny"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["statusCode"] == 400 and name in answer.text
        assert httpx.get(url + "/api/usage", params={name: "acme/tiny"}).status_code == 200


@pytest.mark.parametrize("value", ["2026", "253402300800", "1.7e9", "-5"])
@pytest.mark.parametrize("name", ["from", "to"])
def test_a_time_that_is_a_number_is_a_400_not_unix_seconds(fakes: Fakes, tmp_path: Path, name: str, value: str) -> None:
    """Found from outside: pydantic read a number as Unix seconds (or milliseconds, by its size): ``from=2026`` was
    1970-01-01T00:33:46 and the answer every row since then, where the README says ISO 8601."""
    with serve_in_thread(create_app(settings_for(fakes, tmp_path))) as url:
        answer = httpx.get(url + "/api/usage", params={name: value})
        assert answer.status_code == 400, answer.text
        assert answer.json()["statusCode"] == 400 and name in answer.text and "ISO 8601" in answer.text
        iso = httpx.get(url + "/api/usage", params={name: "2026-12-01"})
        assert iso.status_code == 200 and iso.json()["filters"][name].startswith("2026-12-01T00:00:00")


def test_prices_are_validated() -> None:
    def parse(pricing: str) -> None:
        text = catalogue_toml(model_toml(extra=f"[models.pricing]\n{pricing}\n"))
        parse_catalogue(tomllib.loads(text), source="c.toml")

    parse("input = 0\noutput = 2.5")
    with pytest.raises(CatalogueError, match=r"pricing\.input: Input should be greater than or equal to 0"):
        parse("input = -1\noutput = 1")
    with pytest.raises(CatalogueError, match=r"pricing\.output: Field required"):
        parse("input = 1")
    with pytest.raises(CatalogueError, match=r"pricing\.cached: unknown key"):
        parse("input = 1\noutput = 1\ncached = 1")
    with pytest.raises(CatalogueError, match=r"pricing\.output: must be a finite number, got inf"):
        parse("input = 1\noutput = inf")
    with pytest.raises(CatalogueError, match=r"pricing\.input: must be a number"):
        parse('input = "0.15"\noutput = 1')
    parse("input = 1\noutput = 2\ncached_input = 0.1")
    parse("input = 1\noutput = 2\ncached_input = 1")
    with pytest.raises(CatalogueError, match=r"pricing\.cached_input: Input should be greater than or equal to 0"):
        parse("input = 1\noutput = 1\ncached_input = -0.5")
    with pytest.raises(CatalogueError, match=r"pricing: cached_input \(2\) is more than input \(1\)"):
        parse("input = 1\noutput = 1\ncached_input = 2")
    with pytest.raises(CatalogueError, match=r"pricing\.cached_input: must be a finite number, got nan"):
        parse("input = 1\noutput = 1\ncached_input = nan")


def test_v1_models_shows_prices_in_openrouters_shape_and_models_stays_as_it_was(fakes: Fakes, tmp_path: Path) -> None:
    settings = settings_for(fakes, tmp_path)
    cached = model_toml("acme", "cache", extra="[models.pricing]\ninput = 1\noutput = 4\ncached_input = 0.25\n")
    write_catalogue(settings.config_path, *PRICED, cached)
    catalogue = load_catalogue(settings.config_path)
    with serve_in_thread(create_app(settings, catalogue)) as url:
        listing = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        one = httpx.get(url + "/v1/models/acme/think").json()
        models_body = httpx.get(url + "/models").content
    assert listing["acme/tiny"]["pricing"] == {"prompt": "0.00000015", "completion": "0.0000006"}
    assert listing["acme/cache"]["pricing"] == {
        "prompt": "0.000001",
        "completion": "0.000004",
        "input_cache_read": "0.00000025",  # OpenRouter's name for a prompt-cache read
    }
    assert one["pricing"] == {"prompt": "0.000001", "completion": "0.000004"}
    assert "pricing" not in listing["acme/free"]
    assert b"pricing" not in models_body and b"cached_input" not in models_body and b"input_cache" not in models_body
    assert models_body == catalogue.body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_upstreams_impossible_counts_are_estimated_and_never_reach_a_budget_or_the_ledger(
    fakes: Fakes, tmp_path: Path, stream: bool
) -> None:
    """Found from outside: a negative prompt count refunded a key's budget and made negative ledger costs; one
    past 32 bits was refused by the ledger's INTEGER, one past 64 bits broke the reply, the budget and every
    later ledger write. Counts that are not token counts are now the gateway's estimate, marked as such."""
    (tmp_path / "keys.toml").write_text(
        f'[[keys]]\nname = "alice"\nkey = "{ALICE}"\n[keys.budget]\ntokens_per_day = 100000\n', encoding="utf-8"
    )
    settings = settings_for(fakes, tmp_path, admin_key=ADMIN)
    # Over settings_for's catalogue: the same models, and the keys file with a budgeted key.
    path = write_catalogue(settings.config_path, *PRICED, header='[server]\nkeys_file = "keys.toml"\n')
    fakes.openrouter.script(
        Reply(tokens=["a"], usage=(-1_000_000, 5)), Reply(tokens=["b"], usage=(3_000_000_000, 5)), Reply(tokens=["c"])
    )
    body = {"model": "acme/think", "messages": BODY["messages"], "stream": stream}
    with serve_in_thread(create_app(settings, load_catalogue(path))) as url, httpx.Client(base_url=url) as client:
        answers = [client.post("/v1/chat/completions", json=body, headers=bearer(ALICE)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        if not stream:
            for answer in answers[:2]:
                usage = answer.json()["usage"]
                assert 0 < usage["prompt_tokens"] < 100 and answer.headers["x-modelgate-usage"] == "estimated"
        report = client.get("/api/usage", headers=bearer(ADMIN)).json()
        spent = client.get("/api/usage", headers=bearer(ALICE)).json()["budget"][0]["spent"]
    totals = report["totals"]
    assert totals["requests"] == 3  # every row written, none refused
    assert 0 < totals["prompt_tokens"] < 300 and totals["cost"] > 0
    assert 0 < spent < 1000  # charged what was estimated: not refunded, not charged billions
