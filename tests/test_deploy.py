"""The deployment files, checked without a Docker engine (none runs on the development machines or CI).

``compose.yaml`` is read as Compose reads it (YAML merge keys, ``${VAR:-default}`` / ``${VAR:?error}``
interpolation), and held against ``settings.py`` (every variable it sets is one modelgate reads, and means what it
should), the ``Dockerfile`` (port, user, command, health check) and ``deploy/prometheus.yml`` (its targets are the
instances). The image's health check command is run against a real server.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.servers import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ("modelgate-a", "modelgate-b")
#: What a user would have in the shell (or an .env file) when running ``docker compose up``.
SHELL = {"MODELGATE_API_KEYS": "mg-compose-key-000111222333", "HF_TOKEN": "hf_compose_test_token"}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of the forms compose.yaml uses; ``:?`` without a value is an error, as in Compose."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg or ""

    return _VARIABLE.sub(value, text)


def compose(env: Mapping[str, str] = SHELL) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(encoding="utf-8"), env))
    return loaded


class Dockerfile:
    """The final stage's instructions (continuation lines joined), keyed by instruction."""

    def __init__(self, text: str) -> None:
        joined = re.sub(r"\\\n\s*", " ", text)
        lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        stages: list[list[tuple[str, str]]] = []
        for line in lines:
            instruction, _, rest = line.partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((instruction.upper(), rest.strip()))
        self.stages = stages
        self.final = stages[-1]

    def one(self, instruction: str) -> str:
        (found,) = [rest for name, rest in self.final if name == instruction]
        return found

    def exec_form(self, instruction: str) -> list[str]:
        value = json.loads(self.one(instruction))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction} in exec form"
        return value


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping"
    return {name: "" if value is None else str(value) for name, value in environment.items()}


class _Reads(dict[str, str]):
    """An environment that notes each variable looked up (``Settings.from_env`` looks each one up with ``get``)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def test_compose_runs_two_instances_redis_postgres_and_prometheus() -> None:
    services = compose()["services"]
    assert set(services) == {*INSTANCES, "redis", "postgres", "prometheus"}
    for name in INSTANCES:
        assert services[name]["build"] == "."
        assert {"redis", "postgres"} <= set(services[name]["depends_on"])
    # The two instances differ only in the host port they publish.
    a, b = ({k: v for k, v in services[name].items() if k != "ports"} for name in INSTANCES)
    assert a == b
    assert services["modelgate-a"]["ports"] != services["modelgate-b"]["ports"]


def test_every_variable_compose_sets_is_one_modelgate_reads() -> None:
    for name in INSTANCES:
        env = service_env(compose()["services"][name])
        reads = _Reads(env)
        Settings.from_env(reads)
        assert set(env) - reads.read == set(), f"{name} sets variables settings.py never reads"


def test_the_instances_share_redis_and_postgresql() -> None:
    services = compose()["services"]
    settings = [Settings.from_env(service_env(services[name])) for name in INSTANCES]
    for each in settings:
        assert each.redis_url == "redis://redis:6379/0"
        assert each.database_url == "postgresql://modelgate:modelgate@postgres:5432/modelgate"
        assert each.api_keys == (SHELL["MODELGATE_API_KEYS"],)
        assert each.credentials["huggingface"] == {"HF_TOKEN": SHELL["HF_TOKEN"]}
        assert each.credentials["openrouter"] == {}  # unset in the shell: empty, not configured
    postgres = service_env(services["postgres"])
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]) == ("modelgate", "modelgate")
    # The password the instances use is the one the database is created with, whatever the shell sets.
    chosen = compose({**SHELL, "POSTGRES_PASSWORD": "s3cret"})["services"]
    assert service_env(chosen["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    assert Settings.from_env(service_env(chosen["modelgate-a"])).database_url == (
        "postgresql://modelgate:s3cret@postgres:5432/modelgate"
    )


def test_compose_refuses_to_start_open_instances_without_keys() -> None:
    with pytest.raises(ValueError, match="MODELGATE_API_KEYS"):
        compose({})


def test_prometheus_scrapes_both_instances_on_the_image_port(dockerfile: Dockerfile) -> None:
    services = compose()["services"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    port = dockerfile.one("EXPOSE")
    assert sorted(targets) == [f"{name}:{port}" for name in INSTANCES]
    for name in INSTANCES:  # published ports map to the port the server listens on
        assert all(str(p).endswith(f":{port}") for p in services[name]["ports"])


def test_dockerfile_runs_the_package_as_a_non_root_user_on_the_exposed_port(dockerfile: Dockerfile) -> None:
    assert dockerfile.one("FROM").startswith("python:3.11-slim")
    assert dockerfile.one("USER") not in {"root", "0"}
    names = [name for name, _ in dockerfile.final]
    assert names.index("USER") < names.index("CMD")
    command = dockerfile.exec_form("ENTRYPOINT") + dockerfile.exec_form("CMD")
    assert command[:2] == ["modelgate", "serve"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options == {"--host": "0.0.0.0", "--port": dockerfile.one("EXPOSE")}
    installs = [rest for stage in dockerfile.stages for name, rest in stage if name == "RUN" and "pip " in rest]
    assert installs and not any("test" in rest for rest in installs)  # the package only, no test extras


def test_dockerfile_environment_is_read_by_modelgate_or_python(dockerfile: Dockerfile) -> None:
    env = shlex.split(dockerfile.one("ENV"))
    names = {item.partition("=")[0] for item in env}
    source = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "modelgate").rglob("*.py"))
    for name in names:
        assert name.startswith("PYTHON") or f'"{name}"' in source, name


def test_dockerignore_sends_only_the_package_sources() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(rules)


@pytest.fixture
def served() -> Iterator[str]:
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url:
        yield url


def test_the_image_health_check_passes_on_a_ready_server_and_fails_without_one(
    dockerfile: Dockerfile, served: str
) -> None:
    check = json.loads(dockerfile.one("HEALTHCHECK").partition("CMD ")[2])
    assert check[0] == "python" and "http://127.0.0.1:8000/ready" in check[-1]
    port = dockerfile.one("EXPOSE")
    ready = [sys.executable, *check[1:-1], check[-1].replace(f"http://127.0.0.1:{port}", served)]
    assert subprocess.run(ready, capture_output=True, timeout=30).returncode == 0
    closed = [sys.executable, *check[1:-1], check[-1].replace(f"127.0.0.1:{port}", "127.0.0.1:9")]
    assert subprocess.run(closed, capture_output=True, timeout=30).returncode != 0


def test_the_image_health_check_fails_while_the_server_is_not_ready(dockerfile: Dockerfile) -> None:
    check = json.loads(dockerfile.one("HEALTHCHECK").partition("CMD ")[2])
    port = dockerfile.one("EXPOSE")
    # /ready is 503 while the Redis the limits need does not answer (nothing listens on port 9).
    with serve_in_thread(create_app(Settings(probe_interval=0, redis_url="redis://127.0.0.1:9/0"))) as url:
        assert httpx.get(url + "/ready").status_code == 503
        unready = [sys.executable, *check[1:-1], check[-1].replace(f"http://127.0.0.1:{port}", url)]
        assert subprocess.run(unready, capture_output=True, timeout=30).returncode != 0
