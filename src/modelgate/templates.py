"""Chat templates for Hugging Face text-generation (TGI) models, rendered as ``transformers`` renders them.

TGI's native ``/generate`` route takes one prompt string, so the gateway must turn the conversation into
exactly the text the model was trained on. ``transformers``' ``apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)`` does that with the Jinja2 ``chat_template`` from the model's
``tokenizer_config.json``, compiled in an ``ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True)`` with a ``raise_exception`` global (``transformers/utils/chat_template_utils.py``,
``_compile_jinja_template``). We do the same, with the same environment settings.

The template texts below are small Jinja2 templates written for the plain-text chat path (system, user,
assistant; no tools, which the gateway never sends) of each official template. They keep the official
branch structure and the official refusal messages; ``tests/test_templates_official.py`` renders the official
templates themselves (verbatim in ``tests/fixtures/chat_templates``) over many conversation shapes and pins ours
byte-for-byte to them:

* ``gemma2``        google/gemma-2-*-it (Gemma family template; no system role, ``model`` for the assistant)
* ``phi3``          microsoft/Phi-3-mini-4k-instruct (current revision, which keeps system messages)
* ``chatml``        Qwen/Qwen2.5-*-Instruct, Qwen2.5-Coder (ChatML with Qwen's default system prompt)
* ``deepseek-r1``   deepseek-ai/DeepSeek-R1-Distill-Qwen-* (generation prompt opens ``<think>``)
* ``mistral-v3``    mistralai/Mistral-7B-Instruct-v0.3 (system text goes into the *last* user turn)
* ``mistral-nemo``  mistralai/Mistral-Nemo-Instruct-2407 (as v3, Tekken spacing: no spaces)
* ``llama3``        meta-llama/Llama-3.1/3.3-*-Instruct (always a system header dated 26 Jul 2024; Llama 3.2's
                    template dates it with the day of the render instead, its only difference)

Templates are compiled once per process, on first use (never at import).
"""

# ruff: noqa: RUF001  (DeepSeek's special tokens are spelled with full-width bars; ASCII "|" would be wrong)

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, NoReturn

from modelgate.errors import BadRequest

if TYPE_CHECKING:
    import jinja2  # imported when a template is first compiled: the catalogue needs only the names

    from modelgate.chat import Message

# Each source is one Jinja2 template; ``trim_blocks``/``lstrip_blocks`` (as in transformers) plus the
# ``{%-``/``{{-`` markers keep the layout whitespace of this file out of the output.

_GEMMA2 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {{- raise_exception('System role not supported') }}
{%- endif %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
    {{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\\n' }}
{%- endif %}
"""

_PHI3 = """\
{%- for message in messages %}
    {%- if message['role'] in ('system', 'user', 'assistant') %}
        {{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\\n' }}
{%- else %}
    {{- eos_token }}
{%- endif %}
"""

_CHATML = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] in ('user', 'assistant') or (message['role'] == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# The last system message is the system prompt, glued to BOS; earlier reasoning (up to the last
# ``</think>``) is cut from assistant turns, because R1 is trained without it.
_DEEPSEEK_R1 = """\
{%- set ns = namespace(system_prompt='') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system_prompt = message['content'] %}
    {%- endif %}
{%- endfor %}
{{- bos_token + ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1] %}
        {%- endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜><think>\\n' }}
{%- endif %}
"""

# Mistral v0.3 and Nemo share one structure; they differ only in the spacing around [INST] and the
# assistant text, which is why they are one template with two parameters rather than two copies.
_MISTRAL = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate \
user/assistant/user/assistant/...') }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- inst_open + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- inst_open + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {%- if trim_assistant %}
            {{- ' ' + message['content'] | trim + eos_token }}
        {%- else %}
            {{- message['content'] + eos_token }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial \
optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

_LLAMA3 = """\
{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = '26 Jul 2024' %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\n' }}
{{- 'Today Date: ' + date_string + '\\n\\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
        + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


class _TemplateRefusal(Exception):
    """What the template's ``raise_exception(...)`` raises; turned into ``BadRequest`` in ``render``.

    A plain exception (jinja2 lets a global's exception through as it is), so that loading the catalogue,
    which only needs ``TEMPLATE_NAMES``, does not import jinja2 (``modelgate models``' start-up)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRefusal(message)


@dataclass(frozen=True)
class ChatTemplate:
    """One model family's chat template and the facts about its special tokens the gateway needs."""

    name: str
    #: BOS string the template emits, if any.
    bos: str | None
    #: TGI's tokenizer adds BOS itself (``add_special_tokens=true`` on ``/generate``), so a BOS the template
    #: emitted must be stripped before sending, or the model sees two (providers.md 7.0, pitfall 7).
    tokenizer_adds_bos: bool
    #: The generation prompt opens a ``<think>`` block: the reply starts inside the reasoning.
    starts_in_reasoning: bool
    #: Jinja2 source (see the module docstring for what it covers).
    source: str = field(repr=False)
    eos: str = ""
    #: Extra template variables (Mistral's spacing switches).
    variables: Mapping[str, object] = field(default_factory=dict, repr=False)
    #: Gemma has no system role: merge a leading system message into the first user turn.
    merge_system_into_first_user: bool = False

    @cached_property
    def _compiled(self) -> jinja2.Template:
        # Same environment as transformers' _compile_jinja_template: sandboxed and immutable, because a
        # template is data, and trim_blocks/lstrip_blocks, which the official renders depend on.
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        env.globals["raise_exception"] = _raise_exception
        return env.from_string(self.source)

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`` gives.

        Raises ``BadRequest`` when the template refuses the conversation (e.g. roles not alternating).
        """
        if not messages:
            raise BadRequest("messages: at least one message is required", param="messages")
        chat = [{"role": m.role, "content": m.content} for m in messages]
        if self.merge_system_into_first_user:
            chat = _merge_leading_system(chat)
        try:
            return self._compiled.render(
                messages=chat,
                add_generation_prompt=True,
                bos_token=self.bos or "",
                eos_token=self.eos,
                tools=None,
                **self.variables,
            )
        except _TemplateRefusal as exc:
            reason = exc.message or "refused"
            raise BadRequest(
                f"messages: the {self.name} chat template refuses this conversation: {reason}",
                data={"template": self.name, "reason": reason},
                param="messages",
            ) from exc


def _merge_leading_system(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """``[system S, user U, ...]`` → ``[user "S\\n\\nU", ...]``; anything else is left for the template to judge."""
    if len(chat) >= 2 and chat[0]["role"] == "system" and chat[1]["role"] == "user":
        merged = {"role": "user", "content": chat[0]["content"] + "\n\n" + chat[1]["content"]}
        return [merged, *chat[2:]]
    return chat


TEMPLATES: Mapping[str, ChatTemplate] = MappingProxyType(
    {
        template.name: template
        for template in (
            ChatTemplate(
                name="chatml",
                bos=None,  # Qwen has no BOS at all
                tokenizer_adds_bos=False,
                starts_in_reasoning=False,
                source=_CHATML,
                eos="<|im_end|>",
            ),
            ChatTemplate(
                name="deepseek-r1",
                bos="<｜begin▁of▁sentence｜>",
                # tokenizer_config.json has add_bos_token: true (LlamaTokenizerFast), so tokenizing the
                # rendered template with special tokens doubles BOS: deepseek-ai/DeepSeek-R1#151,
                # huggingface/open-r1#462 ([151646, 151646, 151644, ...]).
                tokenizer_adds_bos=True,
                starts_in_reasoning=True,
                source=_DEEPSEEK_R1,
                eos="<｜end▁of▁sentence｜>",
            ),
            ChatTemplate(
                name="gemma2",
                bos="<bos>",
                tokenizer_adds_bos=True,
                starts_in_reasoning=False,
                source=_GEMMA2,
                eos="<eos>",
                merge_system_into_first_user=True,
            ),
            ChatTemplate(
                name="llama3",
                bos="<|begin_of_text|>",
                tokenizer_adds_bos=True,
                starts_in_reasoning=False,
                source=_LLAMA3,
                eos="<|eot_id|>",
            ),
            ChatTemplate(
                name="mistral-nemo",
                bos="<s>",
                tokenizer_adds_bos=True,
                starts_in_reasoning=False,
                source=_MISTRAL,
                eos="</s>",
                variables=MappingProxyType({"inst_open": "[INST]", "trim_assistant": False}),
            ),
            ChatTemplate(
                name="mistral-v3",
                bos="<s>",
                tokenizer_adds_bos=True,
                starts_in_reasoning=False,
                source=_MISTRAL,
                eos="</s>",
                variables=MappingProxyType({"inst_open": "[INST] ", "trim_assistant": True}),
            ),
            ChatTemplate(
                name="phi3",
                bos=None,  # the current template emits none
                tokenizer_adds_bos=False,
                starts_in_reasoning=False,
                source=_PHI3,
                eos="<|endoftext|>",
            ),
        )
    }
)

TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(TEMPLATES))


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise BadRequest(f"unknown chat template {name!r} (known: {', '.join(TEMPLATE_NAMES)})") from None


def render_prompt(name: str, messages: Sequence[Message]) -> str:
    """The text to send as TGI ``inputs`` for ``messages`` under template ``name``.

    This is the template's render minus its leading BOS string where the model's tokenizer adds BOS by
    itself: TGI's ``/generate`` tokenizes ``inputs`` with ``add_special_tokens=true`` (unlike its own
    ``/v1/chat/completions``, which renders the template and tokenizes with ``add_special_tokens=false``),
    so keeping the template's ``<bos>``/``<s>``/``<|begin_of_text|>`` would give the model two BOS tokens,
    a sequence it never saw in training and that measurably degrades its replies.
    """
    template = get_template(name)
    prompt = template.render(messages)
    if template.tokenizer_adds_bos and template.bos and prompt.startswith(template.bos):
        return prompt[len(template.bos) :]
    return prompt
