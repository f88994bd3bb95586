"""Environment → one frozen ``Settings``. Read once by ``create_app()`` or the CLI, never at import.

Provider credentials come only from the environment; base URLs from the environment win over the
catalogue file's ``[providers.*]`` tables. A provider *instance* (``[providers.NAME]``, see catalogue.py)
names the variable holding its key (``api_key_env``) and takes its base URL from
``MODELGATE_<NAME>_BASE_URL``; both are looked up here, in the environment read once by ``from_env``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: Built-in upstream base URLs per provider kind (the catalogue file and then the environment override
#: them). The ``openai`` kind and Hugging Face's ``tgi`` API have none: their entry must name one.
DEFAULT_BASE_URLS: Mapping[str, str] = {
    # Hugging Face's router: OpenAI Chat Completions at {base}/chat/completions, as both official clients
    # call it (huggingface_hub _providers/_common.py, @huggingface/inference config.ts HF_ROUTER_AUTO_ENDPOINT).
    "huggingface": "https://router.huggingface.co/v1",
    "cloudflare": "https://api.cloudflare.com/client/v4",
    "openrouter": "https://openrouter.ai/api/v1",
    "ollama": "http://127.0.0.1:11434",
}

#: Environment variables holding each provider kind's credentials (all must be set for it to be
#: configured). The last one is the bearer key, which an instance's ``api_key_env`` renames.
CREDENTIAL_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "huggingface": ("HF_TOKEN",),
    "cloudflare": ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "ollama": (),
    "openai": (),
}


def base_url_variable(instance: str) -> str:
    """``MODELGATE_<NAME>_BASE_URL`` for an instance name (upper-cased, ``-``, ``.`` and ``~`` → ``_``)."""
    return "MODELGATE_" + re.sub(r"[-.~]", "_", instance).upper() + "_BASE_URL"


_BASE_URL = re.compile(r"^https?://[^/\s?#]+[^\s?#]*$")
_BASE_URL_VARIABLE = re.compile(r"^MODELGATE_\w+_BASE_URL$")
#: What every URL check below says of a port no connection can use.
_BAD_PORT = "the port is not one of 1 to 65535"


def _port_unusable(url: str) -> bool:
    """Whether ``url`` names a port no connection can use (not a number, 0, or out of range); no port is fine."""
    try:
        return urlsplit(url).port == 0
    except ValueError:  # no number, out of range, or a broken IPv6 address
        return True


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base URL, or None. Paths are appended to it (``/chat/completions``), so it is
    an http(s) URL with a host, a port a connection can use, and no query or fragment (the path would land in them).
    A password in it is not shown."""
    shown = repr(re.sub(r"(//[^/?#@:]*:)[^/?#@]*@", r"\1***@", url))
    if not _BASE_URL.match(url):
        return f"must be an http:// or https:// URL with no query or fragment, got {shown}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL"
        return f"{shown}: {exc}"
    if not parts.hostname:
        return f"{shown}: names no host"
    if _port_unusable(url):
        return f"{shown}: {_BAD_PORT}"
    return None


def ollama_base_url(ollama_host: str | None) -> str:
    """``OLLAMA_HOST`` as Ollama's own clients read it (envconfig.Host, ollama-python ``_parse_host``): a URL, or
    ``host``, ``host:port``, ``[ipv6]:port``, a bare IPv6 address, each with an optional ``/path``; port 11434."""
    if not ollama_host:
        return DEFAULT_BASE_URLS["ollama"]
    value = ollama_host.strip().rstrip("/")
    if "://" in value:
        return value  # an explicit scheme keeps the scheme's default port, as Ollama does
    if value == "ollama.com":  # envconfig.Host (#12617): the cloud's own name means its https port
        return "https://ollama.com:443"
    hostport, _, path = value.partition("/")
    host, port = hostport, ""
    if hostport.startswith("[") and "]" in hostport:
        host, _, rest = hostport.partition("]")
        host, port = host + "]", rest.removeprefix(":")
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    elif ":" in hostport:  # a bare IPv6 address, which a URL holds in brackets
        host = f"[{hostport}]"
    return f"http://{host or '127.0.0.1'}:{port or '11434'}" + (f"/{path}" if path else "")


#: The least a timeout or an interval that cannot be off may be set to (seconds); the CLI's options say the same.
MIN_SECONDS = 0.01

#: ``MODELGATE_DATABASE_URL`` / ``serve --database-url`` value that turns the usage ledger off.
LEDGER_OFF = "off"
#: URL schemes of the databases the ledger speaks (``usage_store.async_url`` picks the driver).
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "postgres"})
#: The ledger's SQLite file, beside the catalogue file it serves.
LEDGER_FILE = "modelgate-usage.sqlite3"


def database_url(given: str | None, config_path: Path | None) -> str | None:
    """The ledger's database: ``given`` (``off``: none), else SQLite beside the catalogue file.

    The built-in catalogue lives inside the installed package, which may be read-only and is
    replaced on upgrade, so its ledger goes to the user's state directory instead
    (``$XDG_STATE_HOME/modelgate/``, by default ``~/.local/state/modelgate/``).
    """
    if given:
        given = given.strip()
        if given.lower() == LEDGER_OFF:
            return None
        scheme = given.partition(":")[0].partition("+")[0].lower()
        if scheme not in DATABASE_SCHEMES or "://" not in given:
            raise ValueError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH, postgresql://… or 'off'")
        _check_database_address(scheme, given)
        return given
    if config_path is not None:
        folder = config_path.resolve().parent
    else:
        # The process's own state directory, whatever environment the settings were read from.
        state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        folder = Path(state_home) / "modelgate"
    return f"sqlite:///{folder / LEDGER_FILE}"


def _check_database_address(scheme: str, url: str) -> None:
    """What would otherwise surface only once the server runs, as a ledger that never opens (logged every second,
    no usage recorded): a SQLite path written with two slashes (read as a host name), or a port that is none.
    The URL is never quoted: it may hold a password."""
    if scheme == "sqlite" and urlsplit(url).netloc:
        raise ValueError("a SQLite URL has no host: sqlite:///relative/path or sqlite:////absolute/path")
    if _port_unusable(url):
        raise ValueError(_BAD_PORT)


#: URL schemes redis-py connects to (``redis.asyncio.Redis.from_url``).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def redis_url(given: str | None) -> str | None:
    """``MODELGATE_REDIS_URL`` as redis-py will take it, or a ``ValueError`` saying why not (never quoting the URL,
    which may hold a password): redis-py refused it only when the server's start-up connected, with a traceback."""
    if not given:
        return None
    use = "use redis://HOST[:PORT][/DB], rediss://… or unix:///PATH"
    scheme, sep, _ = given.partition("://")
    if not sep:
        raise ValueError(f"not a Redis URL: {use}")
    if scheme.lower() not in REDIS_SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}: {use}")
    if _port_unusable(given):
        raise ValueError(_BAD_PORT)
    return given


@dataclass(frozen=True)
class Settings:
    config_path: Path | None = None
    #: Provider instance name → base URL from the environment (wins over the catalogue file).
    base_url_overrides: Mapping[str, str] = field(default_factory=dict)
    #: Provider instance name → {variable: value} of the credentials found in the environment.
    credentials: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: The process environment as ``from_env`` read it, for the variables the catalogue names
    #: (``api_key_env``, ``MODELGATE_<NAME>_BASE_URL`` of a further instance). Never printed.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    api_keys: tuple[str, ...] = ()
    redis_url: str | None = None
    cache_max_age: int | None = None
    cors_origins: tuple[str, ...] | None = None
    watch_config: bool = False
    log_level: str = "info"
    max_body_bytes: int = 1_000_000
    max_messages: int = 1_000
    #: Decoded bytes of one inline (``data:``) image, and of all images of one request (413 above either).
    max_image_bytes: int = 5_000_000
    max_images_bytes: int = 10_000_000
    #: Seconds a client may take to send its whole request body (slow senders get 408).
    client_body_timeout: float = 30.0
    #: Seconds a streamed chunk may wait for a client that does not read before the stream is ended.
    client_send_timeout: float = 60.0
    #: Seconds between background health probes of the providers (0 turns them off).
    probe_interval: float = 60.0
    #: The usage ledger's database (``ledger.py``): ``sqlite:///…`` or ``postgresql://…``; None: no ledger.
    #: ``from_env`` fills in the default (``default_database_url``); a bare ``Settings()`` keeps none.
    database_url: str | None = None
    #: Seconds between two ledger writes (rows also go once ``ledger.Ledger.batch_size`` wait).
    ledger_flush_interval: float = 1.0
    #: The key that reads everyone's usage (``GET /api/usage``) and manages keys (``/admin/keys``); never a chat key.
    admin_key: str | None = None
    #: Seconds between two checks of the database for changed run-time keys (``runtime_keys.py``).
    key_refresh_interval: float = 1.0
    # -- upstream reply limits (README "Upstream replies"); ``providers.base.Connection`` carries them.
    #: Bytes an upstream may send without completing an event (one SSE line or event, one NDJSON record,
    #: a run of comments or empty chunks): beyond it the stream fails with an error part.
    upstream_max_event_bytes: int = 4 * 1024 * 1024
    #: Seconds one upstream reply may stream in all (0: no limit, the default: a healthy reply may be long).
    upstream_max_stream_seconds: float = 0.0
    # --- the HTTP server and its shutdown (server.py, drain.py) ---------------------------------
    #: Bytes a request line + headers may take (more → 431).
    max_header_bytes: int = 32_768
    #: Seconds a client has to send its request line and headers (then 408 and close).
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open between two requests.
    keepalive_timeout: float = 5.0
    #: Open connections per process (more → 503 and close); None: half the open-files limit.
    max_connections: int | None = None
    #: Seconds running streams get after SIGTERM before they end with a "shutting down" error part.
    graceful_timeout: float = 30.0
    #: With keys configured, ``/metrics`` and ``/api/status`` need a key too.
    private_ops: bool = False
    #: OpenTelemetry traces of chat requests (``tracing.py``; needs ``modelgate[otel]``).
    tracing: bool = False
    #: ``GET``/``HEAD /models`` written by the HTTP protocol itself, without an ASGI task (``protocol_answers.py``).
    protocol_answers: bool = True
    #: The middle of a streamed reply carried from the upstream's read to the client's socket (``push_lane.py``).
    push_lane: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """The settings of ``environ`` (default: the process's). A value it cannot use is a ``ValueError`` whose
        message names the variable, for the CLI to print as one line."""
        env = os.environ if environ is None else environ
        base_urls = {
            provider: env[f"MODELGATE_{provider.upper()}_BASE_URL"].rstrip("/")
            for provider in DEFAULT_BASE_URLS
            if env.get(f"MODELGATE_{provider.upper()}_BASE_URL")
        }
        if "ollama" not in base_urls and env.get("OLLAMA_HOST"):
            base_urls["ollama"] = ollama_base_url(env["OLLAMA_HOST"])
            if problem := base_url_problem(base_urls["ollama"]):
                raise ValueError(f"OLLAMA_HOST: {problem}")
        # Every instance's variable, as the file's base_url is checked: the variable wins over it, and a URL no call
        # can use made every call a 502 instead of a line at start.
        for variable, value in env.items():
            if value and _BASE_URL_VARIABLE.match(variable) and (problem := base_url_problem(value)):
                raise ValueError(f"{variable}: {problem}")
        credentials = {
            provider: {name: env[name] for name in names if env.get(name)}
            for provider, names in CREDENTIAL_VARIABLES.items()
        }
        origins = env.get("MODELGATE_CORS_ORIGINS")
        values: dict[str, object] = {
            "environ": dict(env),
            "config_path": Path(env["MODELGATE_CONFIG"]) if env.get("MODELGATE_CONFIG") else None,
            "base_url_overrides": base_urls,
            "credentials": credentials,
            "api_keys": tuple(k.strip() for k in env.get("MODELGATE_API_KEYS", "").split(",") if k.strip()),
            "redis_url": _named("MODELGATE_REDIS_URL", redis_url, env.get("MODELGATE_REDIS_URL")),
            # Cache-Control's delta-seconds: never negative; the catalogue file's [server] cache_max_age bound.
            "cache_max_age": env_number(env, "MODELGATE_CACHE_MAX_AGE", int, maximum=2**31 - 1),
            "cors_origins": tuple(o.strip() for o in origins.split(",") if o.strip()) if origins else None,
            "watch_config": env.get("MODELGATE_WATCH_CONFIG", "").lower() in {"1", "true", "yes"},
            "log_level": env.get("MODELGATE_LOG_LEVEL", "info").lower(),
            "admin_key": env.get("MODELGATE_ADMIN_KEY") or None,
            **{
                name: env_number(env, variable, float)
                for name, variable in (
                    ("probe_interval", "MODELGATE_PROBE_INTERVAL"),  # 0 turns the probes off
                    ("graceful_timeout", "MODELGATE_GRACEFUL_TIMEOUT"),  # 0: streams end at once on SIGTERM
                )
                if env.get(variable)
            },
            # 0 is no setting for these: every request a 408 at once, every idle connection closed as it opens,
            # a loop polling the database with no pause. The least is the CLI's (``--header-timeout``).
            **{
                name: env_number(env, variable, float, minimum=MIN_SECONDS)
                for name, variable in (
                    ("client_body_timeout", "MODELGATE_CLIENT_BODY_TIMEOUT"),
                    ("client_send_timeout", "MODELGATE_CLIENT_SEND_TIMEOUT"),
                    ("header_timeout", "MODELGATE_HEADER_TIMEOUT"),
                    ("keepalive_timeout", "MODELGATE_KEEPALIVE_TIMEOUT"),
                    ("ledger_flush_interval", "MODELGATE_LEDGER_FLUSH_INTERVAL"),
                    ("key_refresh_interval", "MODELGATE_KEY_REFRESH_INTERVAL"),
                )
                if env.get(variable)
            },
            **_upstream_limits(env),
            **{
                name: env_number(env, variable, int, minimum=1)
                for name, variable in (
                    ("max_header_bytes", "MODELGATE_MAX_HEADER_BYTES"),
                    ("max_connections", "MODELGATE_MAX_CONNECTIONS"),
                )
                if env.get(variable)
            },
            "private_ops": env.get("MODELGATE_PRIVATE_OPS", "").lower() in {"1", "true", "yes"},
            "tracing": tracing_enabled(env),
            "protocol_answers": env.get("MODELGATE_PROTOCOL_ANSWERS", "").lower() not in {"0", "false", "no", "off"},
            "push_lane": env.get("MODELGATE_PUSH_LANE", "").lower() not in {"0", "false", "no", "off"},
        }
        values.update(overrides)
        if "database_url" not in overrides:
            config_path = values["config_path"]
            try:
                values["database_url"] = database_url(
                    env.get("MODELGATE_DATABASE_URL"), config_path if isinstance(config_path, Path) else None
                )
            except ValueError as exc:
                raise ValueError(f"MODELGATE_DATABASE_URL: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]

    def base_url_override(self, instance: str) -> str | None:
        """The instance's base URL from the environment, if any (``base_url_overrides`` first)."""
        found = self.base_url_overrides.get(instance) or self.environ.get(base_url_variable(instance))
        return found.rstrip("/") if found else None

    def credential_values(self, instance: str, variables: Iterable[str]) -> dict[str, str]:
        """``{variable: value}`` for the ``variables`` that are set: the instance's own credentials first,
        then any provider's (one ``HF_TOKEN`` serves every Hugging Face instance), then the environment."""
        found: dict[str, str] = {}
        own = self.credentials.get(instance, {})
        for name in variables:
            value = own.get(name) or self._any_credential(name) or self.environ.get(name)
            if value:
                found[name] = value
        return found

    def _any_credential(self, name: str) -> str | None:
        for values in self.credentials.values():
            if values.get(name):
                return values[name]
        return None

    def missing_credentials(self, provider: str, variables: Iterable[str] | None = None) -> list[str]:
        """The credential variables of ``provider`` (an instance; by default its kind's variables) not set."""
        names = tuple(CREDENTIAL_VARIABLES.get(provider, ()) if variables is None else variables)
        found = self.credential_values(provider, names)
        return [name for name in names if name not in found]


def _named(variable: str, check: Callable[[str | None], str | None], value: str | None) -> str | None:
    """``check(value)``, its ``ValueError`` naming ``variable``."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from None


def tracing_enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: ``MODELGATE_OTEL`` decides when set, else an OTLP endpoint."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":  # OpenTelemetry's own off switch
        return False
    explicit = env.get("MODELGATE_OTEL", "").strip().lower()
    if explicit:
        return explicit in {"1", "true", "yes", "on"}
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _upstream_limits(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if env.get("MODELGATE_UPSTREAM_MAX_EVENT_BYTES"):
        values["upstream_max_event_bytes"] = env_number(env, "MODELGATE_UPSTREAM_MAX_EVENT_BYTES", int, minimum=1)
    if env.get("MODELGATE_UPSTREAM_MAX_STREAM_SECONDS"):
        values["upstream_max_stream_seconds"] = env_number(env, "MODELGATE_UPSTREAM_MAX_STREAM_SECONDS", float)
    return values


def env_number(
    env: Mapping[str, str],
    variable: str,
    kind: type[int | float],
    *,
    minimum: float = 0,
    maximum: int | None = None,
) -> float | None:
    """``variable`` as a finite number (an int for ``kind=int``) in [minimum, maximum]; None when unset or empty.

    Anything else is a ``ValueError`` naming the variable: a bare ``int("1m")`` would say neither which
    variable nor what it expects.
    """
    text = env.get(variable, "")
    if not text:
        return None
    expected = "a whole number" if kind is int else "a number of seconds"
    try:
        value = kind(text)
    except ValueError:  # also an integer beyond Python's 4300 digits
        raise ValueError(f"{variable}: expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{variable}: expected {expected} {bounds}, got {text!r}")
    return value
