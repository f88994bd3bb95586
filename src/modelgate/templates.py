"""Chat templates for text-generation (TGI) models. Placeholder: the renderer lands in its own commit."""

from __future__ import annotations

TEMPLATE_NAMES: tuple[str, ...] = ("chatml", "deepseek-r1", "gemma2", "llama3", "mistral-nemo", "mistral-v3", "phi3")
