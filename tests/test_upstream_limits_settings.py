"""The upstream reply limits: read from the environment, carried to every provider's ``Connection``."""

from __future__ import annotations

from modelgate.app import GatewayState
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings


def test_defaults_cap_events_at_4_mib_and_leave_the_stream_duration_unlimited() -> None:
    settings = Settings.from_env({})
    assert settings.upstream_max_event_bytes == 4 * 1024 * 1024
    connection = GatewayState(settings, load_catalogue()).connection("openrouter")
    assert connection.max_event_bytes == 4 * 1024 * 1024
    assert connection.max_stream_seconds is None


def test_the_environment_sets_both_limits_for_every_provider() -> None:
    settings = Settings.from_env(
        {"MODELGATE_UPSTREAM_MAX_EVENT_BYTES": "65536", "MODELGATE_UPSTREAM_MAX_STREAM_SECONDS": "2.5"}
    )
    state = GatewayState(settings, load_catalogue())
    for provider in ("huggingface", "cloudflare", "openrouter", "ollama"):
        connection = state.connection(provider)
        assert (connection.max_event_bytes, connection.max_stream_seconds) == (65536, 2.5)
