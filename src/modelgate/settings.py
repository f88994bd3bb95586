"""Environment → one frozen ``Settings``. Read once by ``create_app()`` or the CLI, never at import.

Provider credentials come only from the environment; base URLs from the environment win over the
catalogue file's ``[providers.*]`` tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Built-in upstream base URLs (the catalogue file and then the environment override them).
DEFAULT_BASE_URLS: Mapping[str, str] = {
    "huggingface": "https://router.huggingface.co/hf-inference",
    "cloudflare": "https://api.cloudflare.com/client/v4",
    "openrouter": "https://openrouter.ai/api/v1",
    "ollama": "http://127.0.0.1:11434",
}

#: Environment variables holding each provider's credentials (all must be set for it to be configured).
CREDENTIAL_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "huggingface": ("HF_TOKEN",),
    "cloudflare": ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "ollama": (),
}


def ollama_base_url(ollama_host: str | None) -> str:
    """``OLLAMA_HOST`` as Ollama's own clients read it: ``host``, ``host:port`` or a URL."""
    if not ollama_host:
        return DEFAULT_BASE_URLS["ollama"]
    value = ollama_host.strip().rstrip("/")
    if "://" in value:
        return value  # an explicit scheme keeps the scheme's default port, as Ollama does
    host, _, port = value.partition(":")
    return f"http://{host or '127.0.0.1'}:{port or '11434'}"


@dataclass(frozen=True)
class Settings:
    config_path: Path | None = None
    #: Provider name → base URL from the environment (wins over the catalogue file).
    base_url_overrides: Mapping[str, str] = field(default_factory=dict)
    #: Provider name → {variable: value} of the credentials found in the environment.
    credentials: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    redis_url: str | None = None
    cache_max_age: int | None = None
    cors_origins: tuple[str, ...] | None = None
    watch_config: bool = False
    log_level: str = "info"
    max_body_bytes: int = 1_000_000
    max_messages: int = 1_000
    #: Seconds a client may take to send its whole request body (slow senders get 408).
    client_body_timeout: float = 30.0
    #: Seconds a streamed chunk may wait for a client that does not read before the stream is ended.
    client_send_timeout: float = 60.0
    #: Seconds between background health probes of the providers (0 turns them off).
    probe_interval: float = 60.0
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        base_urls = {
            provider: env[f"MODELGATE_{provider.upper()}_BASE_URL"].rstrip("/")
            for provider in DEFAULT_BASE_URLS
            if env.get(f"MODELGATE_{provider.upper()}_BASE_URL")
        }
        if "ollama" not in base_urls and env.get("OLLAMA_HOST"):
            base_urls["ollama"] = ollama_base_url(env["OLLAMA_HOST"])
        credentials = {
            provider: {name: env[name] for name in names if env.get(name)}
            for provider, names in CREDENTIAL_VARIABLES.items()
        }
        origins = env.get("MODELGATE_CORS_ORIGINS")
        values: dict[str, object] = {
            "config_path": Path(env["MODELGATE_CONFIG"]) if env.get("MODELGATE_CONFIG") else None,
            "base_url_overrides": base_urls,
            "credentials": credentials,
            "api_keys": tuple(k.strip() for k in env.get("MODELGATE_API_KEYS", "").split(",") if k.strip()),
            "redis_url": env.get("MODELGATE_REDIS_URL") or None,
            "cache_max_age": int(env["MODELGATE_CACHE_MAX_AGE"]) if env.get("MODELGATE_CACHE_MAX_AGE") else None,
            "cors_origins": tuple(o.strip() for o in origins.split(",") if o.strip()) if origins else None,
            "watch_config": env.get("MODELGATE_WATCH_CONFIG", "").lower() in {"1", "true", "yes"},
            "log_level": env.get("MODELGATE_LOG_LEVEL", "info").lower(),
            **{
                name: float(env[variable])
                for name, variable in (
                    ("client_body_timeout", "MODELGATE_CLIENT_BODY_TIMEOUT"),
                    ("client_send_timeout", "MODELGATE_CLIENT_SEND_TIMEOUT"),
                    ("probe_interval", "MODELGATE_PROBE_INTERVAL"),
                    ("header_timeout", "MODELGATE_HEADER_TIMEOUT"),
                    ("keepalive_timeout", "MODELGATE_KEEPALIVE_TIMEOUT"),
                    ("graceful_timeout", "MODELGATE_GRACEFUL_TIMEOUT"),
                )
                if env.get(variable)
            },
            **{
                name: int(env[variable])
                for name, variable in (
                    ("max_header_bytes", "MODELGATE_MAX_HEADER_BYTES"),
                    ("max_connections", "MODELGATE_MAX_CONNECTIONS"),
                )
                if env.get(variable)
            },
            "private_ops": env.get("MODELGATE_PRIVATE_OPS", "").lower() in {"1", "true", "yes"},
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def missing_credentials(self, provider: str) -> list[str]:
        found = self.credentials.get(provider, {})
        return [name for name in CREDENTIAL_VARIABLES.get(provider, ()) if name not in found]
