"""Catalogue validation: every rejected file gets one clear message naming the file, the model and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate import catalogue as catalogue_module
from modelgate.catalogue import load_catalogue
from modelgate.errors import CatalogueError
from tests.catalogue_files import model_toml, write_catalogue


def rejected(tmp_path: Path, *models: str, header: str = "") -> str:
    path = write_catalogue(tmp_path / "catalogue.toml", *models, header=header)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    message = info.value.message
    assert message.startswith(f"{path}: "), message
    assert "Traceback" not in message
    return message


def with_parameter(name: str, value: str) -> str:
    """The default test model with one parameter line replaced (or added)."""
    text = model_toml()
    for line in text.splitlines():
        if line.startswith(f"{name} = "):
            return text.replace(line, f"{name} = {value}")
    return model_toml(parameters_extra=f"{name} = {value}\n")


# --- unknown keys -------------------------------------------------------------------------------


def test_unknown_key_on_a_model(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(extra='colour = "red"\n'))
    assert "model 'acme/tiny': colour: unknown key" in message


def test_unknown_parameter(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(parameters_extra="top_k = 3\n"))
    assert "model 'acme/tiny': configuration.parameters.top_k: unknown key" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header='modls_order = ["acme/tiny"]\n')
    assert message.endswith("modls_order: unknown key")


def test_unknown_server_key(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header="[server]\ncache_maxage = 5\n")
    assert "server.cache_maxage: unknown key" in message


# --- wrong types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_new_tokens", '"512"', "max_new_tokens: Input should be a valid integer (got '512')"),
        ("max_new_tokens", "true", "max_new_tokens: Input should be a valid integer (got True)"),
        ("truncate", "1000.5", "truncate: Input should be a valid integer (got 1000.5)"),
        ("typical_p", '"0.2"', "typical_p: must be a number, got '0.2'"),
        ("repetition_penalty", "true", "repetition_penalty: must be a number, got True"),
        ("temperature", '"hot"', "temperature: must be a number, got 'hot'"),
        ("return_full_text", '"no"', "return_full_text: Input should be a valid boolean (got 'no')"),
    ],
)
def test_wrong_parameter_types(tmp_path: Path, name: str, value: str, expected: str) -> None:
    message = rejected(tmp_path, with_parameter(name, value))
    assert f"model 'acme/tiny': configuration.parameters.{expected}" in message
    assert message.count("\n") == 0, "one problem, one line"


def test_wrong_type_of_a_model_field(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml().replace('description = "A test model"', "description = 3"))
    assert "model 'acme/tiny': description: Input should be a valid string (got 3)" in message


def test_model_type_outside_the_seed_literal(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(type="base"))
    assert "model 'acme/tiny': type: Input should be 'instruct' or 'chat' (got 'base')" in message


def test_missing_required_field(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml().replace('provider = "ollama"\n', ""))
    assert "model 'acme/tiny': provider: Field required" in message


def test_models_must_be_a_list_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text("models = 3\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"catalogue\.toml: models: Input should be a valid list"):
        load_catalogue(path)


# --- identity and names -----------------------------------------------------------------------------


def test_duplicate_publisher_and_name(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), model_toml("other", "x"), model_toml(upstream="again"))
    assert "model 'acme/tiny': publisher/name: declared twice (models #1 and #3)" in message


def test_unknown_provider(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(provider="llama"))
    assert "model 'acme/tiny': provider: unknown provider 'llama'" in message
    assert "huggingface, cloudflare, openrouter, ollama" in message
    assert "[providers.NAME]" in message


def test_a_further_provider_needs_a_kind(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header='[providers.llama]\nbase_url = "http://x"\n')
    assert "providers.llama: kind: required for a provider that is not one of" in message
    assert "openai" in message


@pytest.mark.parametrize(
    ("field", "value"), [("name", "a/b"), ("name", ".."), ("name", "has space"), ("publisher", "é")]
)
def test_names_must_be_safe_url_segments(tmp_path: Path, field: str, value: str) -> None:
    model = model_toml(**{field: value})
    message = rejected(tmp_path, model)
    label = f"acme/{value}" if field == "name" else f"{value}/tiny"
    assert f"model '{label}': {field}: {value!r} is not safe as a URL path segment" in message


def test_a_provider_name_longer_than_the_ledgers_column_is_refused(tmp_path: Path) -> None:
    # usage_store.py: provider VARCHAR(64), model VARCHAR(256); a longer name could never be recorded.
    name = "p" * 65
    message = rejected(tmp_path, model_toml(provider=name), header=f'[providers.{name}]\nkind = "ollama"\n')
    assert f"providers: provider '{name}': the name is longer than 64 characters" in message
    fits = "p" * 64
    catalogue = load_catalogue(
        write_catalogue(tmp_path / "c.toml", model_toml(provider=fits), header=f'[providers.{fits}]\nkind = "ollama"\n')
    )
    assert catalogue.models[0].provider == fits


def test_a_model_id_longer_than_the_ledgers_column_is_refused(tmp_path: Path) -> None:
    publisher, name = "p" * 100, "n" * 156  # publisher/name: 257 characters
    message = rejected(tmp_path, model_toml(publisher, name))
    assert f"model '{publisher}/{name}': publisher/name: longer than 256 characters" in message
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml(publisher, name[:-1])))
    assert len(catalogue.models[0].id) == 256


# --- ranges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_new_tokens", "0", "max_new_tokens: Input should be greater than 0 (got 0)"),
        ("max_new_tokens", "-1", "max_new_tokens: Input should be greater than 0 (got -1)"),
        ("truncate", "0", "truncate: Input should be greater than 0 (got 0)"),
        ("typical_p", "0", "typical_p: must be in (0, 1) or -1, got 0"),
        ("typical_p", "1", "typical_p: must be in (0, 1) or -1, got 1"),
        ("typical_p", "-0.5", "typical_p: must be in (0, 1) or -1, got -0.5"),
        ("repetition_penalty", "0", "repetition_penalty: must be > 0 or -1, got 0"),
        ("repetition_penalty", "-2", "repetition_penalty: must be > 0 or -1, got -2"),
        ("temperature", "-0.1", "temperature: Input should be greater than or equal to 0 (got -0.1)"),
    ],
)
def test_out_of_range_numbers(tmp_path: Path, name: str, value: str, expected: str) -> None:
    message = rejected(tmp_path, with_parameter(name, value))
    assert f"model 'acme/tiny': configuration.parameters.{expected}" in message


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            model_toml(max_new_tokens=2**64),
            "configuration.parameters.max_new_tokens: Input should be less than or equal to 2147483647 "
            "(got 18446744073709551616)",
        ),
        (
            model_toml(truncate=10**400),
            "configuration.parameters.truncate: Input should be less than or equal to 2147483647 "
            "(got an integer of 401 digits)",
        ),
        (model_toml(extra="context_length = 2147483648\n"), "context_length: Input should be less than or equal to"),
        (model_toml(extra="max_concurrency = 2147483648\n"), "max_concurrency: Input should be less than or equal to"),
    ],
)
def test_integers_beyond_what_the_wire_carries_are_refused(tmp_path: Path, model: str, expected: str) -> None:
    # Accepted, they made every GET /models a 500 (orjson: "Integer exceeds 64-bit range").
    message = rejected(tmp_path, model)
    assert f"model 'acme/tiny': {expected}" in message
    assert message.count("\n") == 0


def test_the_largest_accepted_integers_are_served(tmp_path: Path) -> None:
    model = model_toml(max_new_tokens=2**31 - 1, truncate=2**31 - 1, extra="context_length = 2147483647\n")
    catalogue = load_catalogue(
        write_catalogue(tmp_path / "c.toml", model, header="[server]\ncache_max_age = 2147483647\n")
    )
    assert b'"max_new_tokens":2147483647' in catalogue.body


def test_a_cache_max_age_beyond_32_bits_is_refused(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header="[server]\ncache_max_age = 2147483648\n")
    assert "server.cache_max_age: Input should be less than or equal to 2147483647" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("repetition_penalty", "inf", "repetition_penalty: must be a finite number, got inf"),
        ("repetition_penalty", "1e400", "repetition_penalty: must be a finite number, got inf"),  # TOML: inf
        ("repetition_penalty", str(10**400), "repetition_penalty: must be at most 9007199254740992 in magnitude"),
        ("typical_p", "nan", "typical_p: must be a finite number, got nan"),
        ("temperature", "inf", "temperature: must be a finite number, got inf"),
        ("temperature", str(2**64), "temperature: must be at most 9007199254740992 in magnitude as an integer, got"),
    ],
)
def test_non_finite_or_huge_numbers_are_refused(tmp_path: Path, name: str, value: str, expected: str) -> None:
    # inf was served as null (the seed's float fields are never null); 10**400 failed building the seed model.
    message = rejected(tmp_path, with_parameter(name, value))
    assert f"model 'acme/tiny': configuration.parameters.{expected}" in message
    assert message.count("\n") == 0


def test_an_integer_beyond_pythons_digit_limit_is_not_valid_toml(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", with_parameter("truncate", "1" * 5000))
    with pytest.raises(CatalogueError, match=r"c\.toml: not valid TOML: Exceeds the limit"):
        load_catalogue(path)


@pytest.mark.parametrize("nested", ["[" * 600 + "]" * 600, "{a = " * 600 + "1" + "}" * 600])
def test_values_nested_past_the_parsers_depth_are_not_valid_toml(tmp_path: Path, nested: str) -> None:
    # tomllib parses nesting by recursion: 500 nested arrays were a RecursionError, a traceback from check-config
    # and serve, and a reload that failed "unexpectedly".
    path = write_catalogue(tmp_path / "c.toml", model_toml(), header=f"x = {nested}\n")
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert info.value.message == f"{path}: not valid TOML: values nested too deeply"


def test_a_failure_building_the_seed_model_is_a_catalogue_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the file's checks miss, the seed's ModelParameters refusing it is one line, never a traceback.
    class Refusing:
        @classmethod
        def model_validate(cls, value: object) -> None:
            raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(catalogue_module, "ModelParameters", Refusing)
    message = rejected(tmp_path, model_toml())
    assert message.endswith(
        "model 'acme/tiny': configuration.parameters: OverflowError: int too large to convert to float"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("typical_p", "0.999"), ("typical_p", "-1"), ("repetition_penalty", "0.01"), ("temperature", "0")],
)
def test_in_range_edges_are_accepted(tmp_path: Path, name: str, value: str) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", with_parameter(name, value)))
    assert catalogue.models[0].wire_parameters[name] == float(value)


def test_the_model_is_named_by_position_when_its_name_is_missing(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), model_toml("b").replace('name = "tiny"\n', ""))
    assert "model #2: name: Field required" in message


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    broken = with_parameter("max_new_tokens", "0").replace("truncate = 1000", "truncate = 0")
    message = rejected(tmp_path, broken)
    lines = message.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(str(tmp_path / "catalogue.toml")) for line in lines)


def test_a_key_holding_a_line_break_stays_on_its_problems_line(tmp_path: Path) -> None:
    # Found by the catalogue fuzzer (ten times its CI cases): a provider named "a\nb" split the line in two.
    message = rejected(tmp_path, model_toml(), header='[providers."a\\nb\\u2028c"]\nkind = 7\n')
    lines = message.splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / "catalogue.toml")), lines
    assert "a\\nb\\u2028c" in lines[0]
    # The same for the checks after validation (30 times the CI cases found this one: a \x85 in models_order).
    message = rejected(tmp_path, model_toml(), header='models_order = ["acme/tiny", "x\\u0085y\\nz"]\n')
    assert message.splitlines() == [
        f"{tmp_path / 'catalogue.toml'}: models_order: names 'x\\x85y\\nz', which is not a declared model"
    ]


# --- models_order -------------------------------------------------------------------------------------


def test_models_order_naming_an_undeclared_model(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header='models_order = ["acme/tiny", "acme/ghost"]\n')
    assert "models_order: names 'acme/ghost', which is not a declared model" in message


def test_models_order_skipping_a_model(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), model_toml(name="b"), header='models_order = ["acme/tiny"]\n')
    assert "models_order: does not name 'acme/b'" in message


def test_models_order_naming_a_model_twice(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header='models_order = ["acme/tiny", "acme/tiny"]\n')
    assert "models_order: names 'acme/tiny' twice" in message


def test_models_order_sets_the_models_list_and_endpoints(tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "c.toml",
        model_toml("a", "one"),
        model_toml("b", "two", provider="openrouter"),
        model_toml("a", "three"),
        header='models_order = ["a/three", "b/two", "a/one"]\n',
    )
    document = load_catalogue(path).document
    assert list(document["configurations"]) == ["a", "b"]
    assert list(document["configurations"]["a"]) == ["one", "three"]
    assert document["models"] == ["a/three", "b/two", "a/one"]
    assert document["endpoints"] == {
        "huggingface": [],
        "cloudflare": [],
        "openrouter": ["/api/ai/openrouter/two/chat"],
        "ollama": ["/api/ai/ollama/three/chat", "/api/ai/ollama/one/chat"],
    }


def test_without_models_order_the_declaration_order_is_used(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml("b", "x"), model_toml("a", "y"))
    assert load_catalogue(path).document["models"] == ["b/x", "a/y"]


# --- templates ------------------------------------------------------------------------------------------


def test_unknown_template(tmp_path: Path) -> None:
    model = model_toml(provider="huggingface").replace('template = "chatml"', 'template = "vicuna"')
    message = rejected(tmp_path, model)
    assert "model 'acme/tiny': template: unknown template 'vicuna' (known: " in message
    assert "chatml" in message


def test_tgi_models_need_a_template(tmp_path: Path) -> None:
    header = '[providers.tgi]\nkind = "huggingface"\napi = "tgi"\nbase_url = "http://tgi:8080"\n'
    message = rejected(tmp_path, model_toml(provider="tgi").replace('template = "chatml"\n', ""), header=header)
    assert "model 'acme/tiny': template: required for models of a huggingface provider with api \"tgi\"" in message


def test_router_models_may_go_without_a_template(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml(provider="huggingface").replace('template = "chatml"\n', ""))
    assert load_catalogue(path).get("acme/tiny").template is None


def test_template_on_a_provider_that_takes_none(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(extra='template = "chatml"\n'))
    assert (
        "model 'acme/tiny': template: only huggingface and openai models take a template "
        "(provider 'ollama' is of kind 'ollama')" in message
    )


# --- routes ---------------------------------------------------------------------------------------------


def test_route_collision_between_provider_and_publisher_forms(tmp_path: Path) -> None:
    # /api/ai/ollama/x/chat would be both acme/x (served by ollama) and ollama/x (publisher "ollama").
    message = rejected(tmp_path, model_toml("acme", "x"), model_toml("ollama", "x", provider="cloudflare"))
    assert "model 'ollama/x': name: /api/ai/ollama/x/chat would also serve 'acme/x'; rename one of them" in message


def test_route_collision_of_two_publishers_on_one_provider(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml("acme", "x"), model_toml("beta", "x"))
    assert "model 'beta/x': name: /api/ai/ollama/x/chat would also serve 'acme/x'" in message


def test_fallback_to_an_undeclared_model(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(extra='fallbacks = ["acme/ghost"]\n'))
    assert "model 'acme/tiny': fallbacks: 'acme/ghost' is not a declared model" in message


# --- the file itself ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as info:
        load_catalogue(tmp_path / "absent.toml")
    assert info.value.message == f"{tmp_path / 'absent.toml'}: file not found"


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[models]\npublisher = ", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"bad\.toml: not valid TOML: "):
        load_catalogue(path)


def test_server_values_are_validated(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header="[server]\ncache_max_age = -1\n")
    assert "server.cache_max_age: Input should be greater than or equal to 0 (got -1)" in message


def test_provider_timeouts_are_validated(tmp_path: Path) -> None:
    message = rejected(tmp_path, model_toml(), header="[providers.ollama]\nconnect_timeout = 0\n")
    assert "providers.ollama.connect_timeout: Input should be greater than 0 (got 0)" in message


def test_the_default_catalogue_is_valid_and_keeps_written_numbers() -> None:
    catalogue = load_catalogue()
    assert len(catalogue.models) == 12
    rwkv = catalogue.get("ollama/rwkv-6-world")
    assert rwkv.wire_parameters["typical_p"] == -1
    assert isinstance(rwkv.wire_parameters["typical_p"], int)
    assert "temperature" not in rwkv.wire_parameters
    assert catalogue.get("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B").wire_parameters["temperature"] == 0.6
