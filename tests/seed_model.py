"""The seed's Python model, for validating live responses against the contract itself.

Copied field for field from the seed document (the project never reads ../shared at run or test time;
only the formatter touched quotes and line breaks). One change, which the issue prescribes: ``TypedDict``
comes from ``typing_extensions`` because pydantic refuses ``typing.TypedDict`` before Python 3.12.
Kept in the seed's own style (``Dict``, ``Optional``), hence the lint exemptions.
"""
# ruff: noqa: UP006, UP035, UP045, I001

from typing import Dict, List, Optional, Literal
from typing_extensions import TypedDict
from pydantic import BaseModel, Field, ConfigDict


class ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int
    typical_p: float = Field(description="Can be -1 for some models meaning it is using defaults of the providers")
    repetition_penalty: float = Field(
        description="Can be -1 for some models meaning it is using defaults of the providers"
    )
    truncate: int
    return_full_text: bool
    temperature: Optional[float] = None


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


class Endpoints(TypedDict):
    huggingface: List[str]
    cloudflare: List[str]
    openrouter: List[str]
    ollama: List[str]


class ModelsResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    configurations: Dict[str, Dict[str, ModelConfiguration]]
    models: List[str]
    endpoints: Endpoints
