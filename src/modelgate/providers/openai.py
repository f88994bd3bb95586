"""Any OpenAI-compatible server (the ``openai`` kind): vLLM, llama.cpp's server, LM Studio, SGLang, TGI's
Messages API, Together, Groq, DeepInfra, …, at ``POST {base}/chat/completions``.

Only the standard Chat Completions fields are sent (the OpenAI API reference): a server may ignore a field
it does not know (llama.cpp's server reads ``repeat_penalty``, not ``repetition_penalty``), so
``typical_p``, ``repetition_penalty`` and ``truncate`` are reported as dropped instead of sent and lost —
unless the instance's ``extra_params`` maps them to the server's own names
(``extra_params = { repetition_penalty = "repeat_penalty" }`` for llama.cpp).
The key is the instance's ``api_key_env``; without one no ``Authorization`` is sent (local servers need none).

What a model attached to its reply for itself goes back as the client returned it: a tool call's ``extra_content``
(Gemini's thought signature on Google's OpenAI compatibility API, ``generativelanguage.googleapis.com/v1beta/openai``,
as ``{"google": {"thought_signature"}}``; Vertex AI's as ``{"vertex": …}``; ai.google.dev/gemini-api/docs/
thought-signatures: Gemini 3 answers a turn whose function calls lack it with a 400) and an assistant message's
``reasoning_details`` (OpenRouter's reasoning blocks, for a server speaking OpenRouter's extension). A server that
sent neither is sent neither: a client hands back only what it got.
"""

from __future__ import annotations

from modelgate.providers.chat_completions import ChatCompletionsProvider


class OpenAICompatible(ChatCompletionsProvider):
    name = "openai"
    carries_extra_content = True
    carries_reasoning_details = True
