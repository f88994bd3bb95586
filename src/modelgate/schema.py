"""The wire contract of ``GET /models``, as the seed document defines it.

These are the seed's Python models, field for field. Two deliberate deviations: the seed imports
``typing.TypedDict``, which pydantic refuses before Python 3.12, so ``Endpoints`` uses
``typing_extensions.TypedDict`` with the same fields; and ``Endpoints`` allows further keys, one per
further provider instance of the catalogue (issue 10: the seed's four keys are always there, in its
order, and a catalogue that declares more instances adds theirs after them). No logic lives here.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict


class ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int
    typical_p: float = Field(description="Can be -1 for some models meaning it is using defaults of the providers")
    repetition_penalty: float = Field(
        description="Can be -1 for some models meaning it is using defaults of the providers"
    )
    truncate: int
    return_full_text: bool
    temperature: Optional[float] = None  # noqa: UP045 - kept exactly as the seed writes it


class ModelConfigurationData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: ModelParameters


class ModelConfiguration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    publisher: str
    name: str
    description: str
    icon: str
    type: Literal["instruct", "chat"]
    configuration: ModelConfigurationData


@with_config(ConfigDict(extra="allow"))
class Endpoints(TypedDict):
    huggingface: list[str]
    cloudflare: list[str]
    openrouter: list[str]
    ollama: list[str]


class ModelsResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    configurations: dict[str, dict[str, ModelConfiguration]]
    models: list[str]
    endpoints: Endpoints


class ErrorResponse(BaseModel):
    """The seed's error shape, used by every non-OpenAI route of the service."""

    model_config = ConfigDict(extra="forbid")

    statusCode: int  # noqa: N815 - wire name
    statusMessage: str  # noqa: N815 - wire name
    data: object | None = None
