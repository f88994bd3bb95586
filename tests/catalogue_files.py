"""Small catalogue files for tests: TOML text built from a few readable pieces."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from modelgate.catalogue import Catalogue


def model_toml(
    publisher: str = "acme",
    name: str = "tiny",
    *,
    provider: str = "ollama",
    type: str = "chat",
    upstream: str = "tiny:1b",
    max_new_tokens: int = 100,
    truncate: int = 1000,
    extra: str = "",
    parameters_extra: str = "",
) -> str:
    template = 'template = "chatml"\n' if provider == "huggingface" else ""
    return f"""
[[models]]
publisher = "{publisher}"
name = "{name}"
provider = "{provider}"
type = "{type}"
description = "A test model"
icon = "mdi:test"
{template}{extra}
[models.configuration]
model = "{upstream}"
[models.configuration.parameters]
max_new_tokens = {max_new_tokens}
typical_p = -1
repetition_penalty = -1
truncate = {truncate}
return_full_text = false
{parameters_extra}
"""


def catalogue_toml(*models: str, header: str = "") -> str:
    return header + "\n" + "".join(models or (model_toml(),))


def write_catalogue(path: Path, *models: str, header: str = "") -> Path:
    path.write_text(catalogue_toml(*models, header=header), encoding="utf-8")
    return path


class BrokenCatalogue(Catalogue):
    """A valid catalogue whose ``/models`` body cannot be built: stands in for an unexpected bug."""

    failure = "detail-only-for-the-log-7f3a"

    @cached_property
    def body(self) -> bytes:
        raise ValueError(self.failure)


def broken_copy(good: Catalogue) -> BrokenCatalogue:
    return BrokenCatalogue(
        source=good.source, models=good.models, declared=good.declared, providers=good.providers, server=good.server
    )
