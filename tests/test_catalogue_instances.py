"""Provider instances in the catalogue file: ``[providers.NAME]`` with a kind, resolved and validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.catalogue import PROVIDER_NAMES, load_catalogue
from modelgate.errors import CatalogueError
from modelgate.instances import KINDS
from modelgate.providers import PROVIDERS
from modelgate.settings import Settings, base_url_variable
from tests.catalogue_files import model_toml, write_catalogue

LLAMA = '[providers.llama]\nkind = "openai"\nbase_url = "http://127.0.0.1:8080/v1"\n'
TGI = '[providers.tgi-local]\nkind = "huggingface"\napi = "tgi"\nbase_url = "http://tgi:8080/"\n'


def rejected(tmp_path: Path, *models: str, header: str = "") -> str:
    path = write_catalogue(tmp_path / "catalogue.toml", *models, header=header)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert info.value.message.startswith(f"{path}: ")
    return info.value.message


def test_the_seed_names_are_instances_of_their_own_kind_with_todays_variables() -> None:
    instances = load_catalogue().instances
    assert list(instances) == list(PROVIDER_NAMES)
    assert {name: i.kind for name, i in instances.items()} == {name: name for name in PROVIDER_NAMES}
    hf = instances["huggingface"]
    assert (hf.api, hf.base_url, hf.credential_variables, hf.protocol) == (
        "router",
        "https://router.huggingface.co/v1",
        ("HF_TOKEN",),
        "huggingface",
    )
    assert instances["cloudflare"].credential_variables == ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN")
    assert instances["openrouter"].credential_variables == ("OPENROUTER_API_KEY",)
    assert instances["ollama"].credential_variables == ()


def test_further_instances_follow_the_seeds_in_declaration_order(tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "c.toml",
        model_toml(provider="llama"),
        model_toml("acme", "tgi-model", provider="tgi-local", extra='template = "chatml"\n'),
        header=LLAMA + TGI.replace("\n", "\napi_key_env = 'TGI_KEY'\n", 1),
    )
    catalogue = load_catalogue(path)
    assert list(catalogue.instances) == [*PROVIDER_NAMES, "llama", "tgi-local"]
    llama, tgi = catalogue.instances["llama"], catalogue.instances["tgi-local"]
    assert (llama.protocol, llama.base_url, llama.credential_variables, llama.key_variable) == (
        "openai",
        "http://127.0.0.1:8080/v1",
        (),
        None,
    )
    assert (tgi.protocol, tgi.base_url, tgi.credential_variables) == ("tgi", "http://tgi:8080", ("TGI_KEY",))


def test_endpoints_keep_the_seeds_four_keys_and_add_one_per_further_instance(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml(provider="llama"), header=LLAMA + TGI)
    endpoints = load_catalogue(path).document["endpoints"]
    # tgi-local serves no model: no key for it.
    assert list(endpoints) == [*PROVIDER_NAMES, "llama"]
    assert endpoints["llama"] == ["/api/ai/llama/tiny/chat"]
    assert endpoints["ollama"] == []


def test_routing_wins_per_model_and_never_shows_in_the_document(tmp_path: Path) -> None:
    header = '[providers.huggingface]\nrouting = "fastest"\n'
    path = write_catalogue(
        tmp_path / "c.toml",
        model_toml(provider="huggingface"),
        model_toml("acme", "two", provider="huggingface", extra='routing = "together"\n'),
        header=header,
    )
    catalogue = load_catalogue(path)
    assert catalogue.get("acme/tiny").routing == "fastest"
    assert catalogue.get("acme/two").routing == "together"
    assert b"fastest" not in catalogue.body and b"together" not in catalogue.body


@pytest.mark.parametrize(
    ("header", "models", "expected"),
    [
        ('[providers.llama]\nkind = "vllm"\n', (), "providers.llama.kind: Input should be 'huggingface', "),
        ('[providers.llama]\nkind = "openai"\n', (), "providers.llama: base_url: required for kind 'openai'"),
        (
            '[providers.tgi]\nkind = "huggingface"\napi = "tgi"\n',
            (),
            'providers.tgi: base_url: required for huggingface api "tgi"',
        ),
        (
            LLAMA + 'api = "tgi"\n',
            (),
            "providers.llama: api: only huggingface providers take an api (kind is 'openai')",
        ),
        (LLAMA + 'routing = "fastest"\n', (), "providers.llama: routing: only the Hugging Face router routes"),
        (TGI + 'routing = "fastest"\n', (), "providers.tgi-local: routing: only the Hugging Face router routes"),
        ('[providers.huggingface]\nrouting = "Fast est"\n', (), "providers.huggingface.routing: 'Fast est' is not"),
        ('[providers.huggingface]\napi = "tgx"\n', (), "providers.huggingface.api: Input should be 'router' or 'tgi'"),
        (
            '[providers.huggingface]\nbase_url = "https://router.huggingface.co/hf-inference"\n',
            (),
            "providers.huggingface: base_url: 'https://router.huggingface.co/hf-inference' is Hugging Face's old",
        ),
        (LLAMA + 'api_key_env = "sk-123 key"\n', (), "providers.llama.api_key_env: 'sk-123 key' is not an environment"),
        (LLAMA.replace("http://127.0.0.1:8080/v1", "127.0.0.1:8080"), (), "providers.llama.base_url: must be an http"),
        (
            LLAMA.replace("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1?x=1"),
            (),
            "providers.llama.base_url: must be an http:// or https:// URL with no query or fragment",
        ),
        (
            LLAMA.replace("8080", "80800"),
            (),
            "providers.llama.base_url: 'http://127.0.0.1:80800/v1': the port is not one of 1 to 65535",
        ),
        ('[providers."a/b"]\nkind = "openai"\n', (), "provider 'a/b': the name is not safe as a URL path segment"),
        (
            '[providers.openrouter]\nextra_params = { typical_p = "typical_p" }\n',
            (),
            "providers.openrouter: extra_params: only openai providers map parameters (kind is 'openrouter')",
        ),
        (
            LLAMA + 'extra_params = { top_k = "top_k" }\n',
            (),
            "providers.llama.extra_params: 'top_k' is not a parameter",
        ),
        (
            "",
            (model_toml(provider="cloudflare", extra='template = "chatml"\n'),),
            "model 'acme/tiny': template: only huggingface and openai models take a template "
            "(provider 'cloudflare' is of kind 'cloudflare')",
        ),
        (
            LLAMA,
            (model_toml(provider="llama", extra='routing = "cheapest"\n'),),
            "model 'acme/tiny': routing: only models of a Hugging Face router provider route (provider 'llama'",
        ),
        (
            TGI,
            (model_toml(provider="tgi-local"),),
            "model 'acme/tiny': template: required for models of a huggingface provider with api \"tgi\"",
        ),
        (
            "",
            (model_toml(extra='capabilities = ["telepathy"]\n'),),
            "model 'acme/tiny': capabilities.0: Input should be",
        ),
    ],
)
def test_each_mistake_names_the_file_the_entry_and_the_field(
    tmp_path: Path, header: str, models: tuple[str, ...], expected: str
) -> None:
    message = rejected(tmp_path, *(models or (model_toml(),)), header=header)
    assert expected in message, message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("first_token_timeout = inf", "providers.openrouter.first_token_timeout: Input should be a finite number"),
        ("whole_reply_timeout = 1e300", "providers.openrouter.whole_reply_timeout: Input should be less than or equal"),
        ("breaker_cooldown = nan", "providers.openrouter.breaker_cooldown: Input should be a finite number"),
        ("max_concurrency = 18446744073709551616", "providers.openrouter.max_concurrency: Input should be less than"),
        ("max_stop_sequences = 0", "providers.openrouter.max_stop_sequences: Input should be greater than or equal"),
        ("max_stop_sequences = 65", "providers.openrouter.max_stop_sequences: Input should be less than or equal"),
    ],
)
def test_a_providers_durations_and_counts_are_finite_and_bounded(tmp_path: Path, line: str, expected: str) -> None:
    # Accepted before, they failed later: when a request armed its timer, or when a count reached the wire.
    assert expected in rejected(tmp_path, model_toml(), header=f"[providers.openrouter]\n{line}\n")
    week = write_catalogue(
        tmp_path / "week.toml", model_toml(), header="[providers.openrouter]\nidle_timeout = 604800\n"
    )
    assert load_catalogue(week).provider_entry("openrouter").idle_timeout == 604800


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ('{ typical_p = "messages" }', "typical_p: 'messages' is a field modelgate writes itself"),
        ('{ truncate = "model" }', "truncate: 'model' is a field modelgate writes itself"),
        ('{ max_new_tokens = "stream" }', "max_new_tokens: 'stream' is a field modelgate writes itself"),
        ('{ repetition_penalty = "temperature" }', "repetition_penalty: 'temperature' is a field modelgate writes"),
        ('{ typical_p = "max_tokens" }', "typical_p: 'max_tokens' is a field modelgate writes itself"),
        ('{ typical_p = "top_k", truncate = "top_k" }', "'top_k' is named twice"),
    ],
)
def test_extra_params_cannot_overwrite_a_field_of_the_request(tmp_path: Path, mapping: str, expected: str) -> None:
    # Accepted before: the parameter's value replaced the request's own field in every call (``messages`` became a
    # number, ``stream`` a count of tokens, one parameter's value another's), and every request to the server failed.
    message = rejected(tmp_path, model_toml(provider="llama"), header=LLAMA + f"extra_params = {mapping}\n")
    assert f"providers.llama.extra_params: {expected}" in message, message


def test_extra_params_may_keep_or_rename_the_token_limit(tmp_path: Path) -> None:
    for wire in ("max_tokens", "max_completion_tokens"):
        header = LLAMA + f'extra_params = {{ max_new_tokens = "{wire}", typical_p = "typical_p" }}\n'
        path = write_catalogue(tmp_path / "c.toml", model_toml(provider="llama"), header=header)
        assert load_catalogue(path).instances["llama"].extra_params["max_new_tokens"] == wire


def test_an_instances_base_url_and_key_come_from_its_own_variables() -> None:
    assert base_url_variable("tgi-local.v2") == "MODELGATE_TGI_LOCAL_V2_BASE_URL"
    settings = Settings.from_env({"MODELGATE_TGI_LOCAL_BASE_URL": "http://other:9/", "TGI_KEY": "secret-1"})
    assert settings.base_url_override("tgi-local") == "http://other:9"
    assert settings.base_url_override("llama") is None
    assert settings.credential_values("tgi-local", ("TGI_KEY", "NOPE")) == {"TGI_KEY": "secret-1"}
    assert settings.missing_credentials("tgi-local", ("TGI_KEY", "NOPE")) == ["NOPE"]
    assert "secret-1" not in repr(settings)


def test_every_kind_and_api_has_an_adapter() -> None:
    assert set(PROVIDERS) == {*KINDS, "tgi"}


def test_openais_own_api_gets_the_token_limit_as_max_completion_tokens(tmp_path: Path) -> None:
    """OpenAI's reasoning models (o-series, GPT-5) refuse ``max_tokens``, and OpenAI takes ``max_completion_tokens``
    for every chat model: an instance at api.openai.com sends that name unless its ``extra_params`` says otherwise,
    wherever its base URL comes from; every other server keeps ``max_tokens`` (the name they all take)."""
    openai = (
        '[providers.oai]\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\napi_key_env = "OPENAI_API_KEY"\n'
    )
    kept = '[providers.kept]\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
    kept += 'extra_params = { max_new_tokens = "max_tokens", typical_p = "typical_p" }\n'
    path = write_catalogue(
        tmp_path / "c.toml",
        *(model_toml("acme", name, provider=name) for name in ("oai", "kept", "llama")),
        header=openai + kept + LLAMA,
    )
    instances = load_catalogue(path).instances
    assert instances["oai"].wire_params("https://api.openai.com/v1") == {"max_new_tokens": "max_completion_tokens"}
    assert instances["kept"].wire_params("https://api.openai.com/v1") == {
        "max_new_tokens": "max_tokens",
        "typical_p": "typical_p",
    }
    llama = instances["llama"]
    assert llama.wire_params("http://127.0.0.1:8080/v1") == {}
    assert llama.wire_params("https://api.openai.com/v1") == {"max_new_tokens": "max_completion_tokens"}  # env's URL
    assert instances["openrouter"].wire_params("https://api.openai.com/v1") == {}  # not an openai-kind instance


def test_openais_own_api_takes_four_stop_sequences_and_other_servers_their_own(tmp_path: Path) -> None:
    """api.openai.com refuses a fifth ``stop`` sequence (a 400, ``array_above_max_length``): an ``openai`` instance
    there says so wherever its base URL comes from; any other server's limit is its adapter's (None: no limit known)."""
    openai = '[providers.oai]\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
    told = '[providers.told]\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\nmax_stop_sequences = 2\n'
    wide = '[providers.tgi]\nkind = "huggingface"\napi = "tgi"\nbase_url = "http://tgi:80"\nmax_stop_sequences = 16\n'
    models = (model_toml("acme", name, provider=name) for name in ("oai", "told", "llama"))
    path = write_catalogue(tmp_path / "c.toml", *models, header=openai + told + wide + LLAMA)
    instances = load_catalogue(path).instances
    assert instances["oai"].stop_limit("https://api.openai.com/v1") == 4
    assert instances["told"].stop_limit("https://api.openai.com/v1") == 2  # the entry's word wins
    assert instances["tgi"].stop_limit("http://tgi:80") == 16  # a TGI launched with --max-stop-sequences 16
    assert instances["llama"].stop_limit("http://127.0.0.1:8080/v1") is None
    assert instances["llama"].stop_limit("https://api.openai.com/v1") == 4  # the environment's URL
    assert instances["openrouter"].stop_limit("https://api.openai.com/v1") is None  # not an openai-kind instance
