"""Fake upstream providers: real ASGI apps on loopback speaking each provider's exact wire protocol.

Usage (the ``fakes`` pytest fixture does this once per session and resets between tests)::

    with running_fakes() as fakes:
        fakes.openrouter.script(Reply(tokens=["Hi", "!"], fault=Fault.drop_after(1)))
        settings = Settings(**fakes.settings_overrides())   # or os.environ.update(fakes.env())
        ...
        assert fakes.openrouter.last.json["max_tokens"] == 2048

Each fake records every request (``.requests``, ``.last``), counts streams the client abandoned
(``.disconnects``, ``.wait_for_disconnects()``), answers ``.script()``-ed replies in order and then
``.default`` (a model in ``.by_model`` always gets its own reply), and serves only ``.models`` when that is
set. See ``_base.Fault`` for the faults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.fakes import cloudflare, huggingface, openrouter
from tests.fakes._base import PROMPT_TOKENS, QUIET_DROPS, FakeUpstream, Fault, RecordedRequest, Reply
from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.huggingface import FakeHuggingFace
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_compatible import FakeOpenAI
from tests.fakes.openrouter import FakeOpenRouter
from tests.servers import serve_in_thread

__all__ = [
    "CREDENTIALS",
    "PROMPT_TOKENS",
    "FakeCloudflare",
    "FakeHuggingFace",
    "FakeOllama",
    "FakeOpenAI",
    "FakeOpenRouter",
    "FakeUpstream",
    "Fakes",
    "Fault",
    "RecordedRequest",
    "Reply",
    "running_fakes",
]

#: The dummy credentials the fakes accept.
CREDENTIALS: dict[str, dict[str, str]] = {
    "huggingface": {"HF_TOKEN": huggingface.TOKEN},
    "cloudflare": {"CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN},
    "openrouter": {"OPENROUTER_API_KEY": openrouter.TOKEN},
    "ollama": {},
    "openai": {},
    # The TGI protocol of the huggingface kind (api = "tgi"): the same token, the same fake.
    "tgi": {"HF_TOKEN": huggingface.TOKEN},
}


@dataclass(frozen=True)
class Fakes:
    huggingface: FakeHuggingFace
    cloudflare: FakeCloudflare
    openrouter: FakeOpenRouter
    ollama: FakeOllama
    #: A stand-alone OpenAI-compatible server (the ``openai`` kind; no instance of the default catalogue).
    openai: FakeOpenAI

    def all(self) -> tuple[FakeUpstream, ...]:
        return (self.huggingface, self.cloudflare, self.openrouter, self.ollama, self.openai)

    @property
    def tgi(self) -> FakeHuggingFace:
        """TGI is served by the Hugging Face fake, at its root."""
        return self.huggingface

    def __getitem__(self, provider: str) -> FakeUpstream:
        fake: FakeUpstream = getattr(self, provider)
        return fake

    def base_urls(self) -> dict[str, str]:
        """The seed instances' base URLs (the HF router's ``/v1`` included) and the ``openai`` fake's."""
        urls = {fake.name: fake.url for fake in self.all()}
        urls["huggingface"] = self.huggingface.url + "/v1"
        return urls

    def env(self) -> dict[str, str]:
        """Environment variables pointing a modelgate service at the fakes, with their credentials."""
        env = {f"MODELGATE_{name.upper()}_BASE_URL": url for name, url in self.base_urls().items()}
        for credentials in CREDENTIALS.values():
            env.update(credentials)
        return env

    def settings_overrides(self) -> dict[str, object]:
        """Keyword arguments for ``Settings(...)`` / ``Settings.from_env(**…)`` with the same effect."""
        return {
            "base_url_overrides": self.base_urls(),
            "credentials": {name: dict(values) for name, values in CREDENTIALS.items()},
        }

    def reset(self) -> None:
        for fake in self.all():
            fake.reset()


@contextmanager
def running_fakes() -> Iterator[Fakes]:
    """Start the four fakes on loopback ports; stop them on exit."""
    fakes = Fakes(FakeHuggingFace(), FakeCloudflare(), FakeOpenRouter(), FakeOllama(), FakeOpenAI())
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addFilter(QUIET_DROPS)  # a scripted drop_after is not an error worth a traceback
    try:
        with ExitStack() as stack:
            for fake in fakes.all():
                # A stream the client forgot must not hold the server's shutdown hostage.
                fake.root = stack.enter_context(serve_in_thread(fake.app, timeout_graceful_shutdown=2))
            yield fakes
    finally:
        uvicorn_errors.removeFilter(QUIET_DROPS)
