"""Our chat templates render what each model's official ``chat_template`` renders, over many conversation shapes.

The official templates are kept verbatim in ``tests/fixtures/chat_templates`` (their sources are listed in
``OFFICIAL`` and in that folder's README.md). They are rendered here as ``transformers``'
``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`` renders them
(``utils/chat_template_utils.py``): an
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the ``raise_exception`` and
``strftime_now`` globals, the tokenizer's special tokens as variables, and ``tools``/``documents`` passed as None.
Tool branches are not exercised: a TGI model has no ``tools`` capability, so the gateway never sends a tool message,
a tool call or a tool list to these templates.
"""

# ruff: noqa: RUF001  (DeepSeek's special tokens are spelled with full-width bars)

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import NoReturn

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelgate.chat import Message, Role
from modelgate.errors import BadRequest
from modelgate.templates import TEMPLATE_NAMES, TEMPLATES, render_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

#: The day ``strftime_now`` gives the official templates; not Llama's default date, so that a template taking the
#: date from the clock shows it.
TODAY = datetime(2025, 1, 15)
LLAMA_DEFAULT_DATE = "26 Jul 2024"


@dataclass(frozen=True)
class Official:
    """One official template: the fixture file, where it was copied from, and its tokenizer's special tokens."""

    file: str
    source: str
    bos_token: str | None
    eos_token: str


OFFICIAL = {
    "gemma2": Official(
        "gemma2.jinja",
        "llama.cpp models/templates/google-gemma-2-2b-it.jinja (Gemma 2 family template; sha256 = the git-lfs oid of "
        "that file in Raudbjorn/ggml-llama.cpp @ 2b949f3d)",
        "<bos>",
        "<eos>",
    ),
    "phi3": Official(
        "phi3.jinja",
        "llama.cpp tests/chat/templates/microsoft-Phi-3-mini-4k-instruct.jinja (ggerganov/llama.cpp @ 8f46558a)",
        "<s>",
        "<|endoftext|>",
    ),
    "chatml": Official(
        "chatml.jinja",
        "llama.cpp tests/chat/templates/Qwen-Qwen2.5-7B-Instruct.jinja (ggerganov/llama.cpp @ eaca756e)",
        None,  # Qwen2.5's tokenizer has no BOS (bos_token null): transformers passes no bos_token
        "<|im_end|>",
    ),
    "deepseek-r1": Official(
        "deepseek-r1.jinja",
        "llama.cpp models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja (ggerganov/llama.cpp @ f0d3ff23, "
        "the HF one-line template whose generation prompt opens <think>)",
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "mistral-v3": Official(
        "mistral-v3.jinja",
        "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template, from two public verbatim copies "
        "(llama.cpp has none); differs from the Nemo file only by v3's spaces and the assistant | trim",
        "<s>",
        "</s>",
    ),
    "mistral-nemo": Official(
        "mistral-nemo.jinja",
        "llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja (sha256 = the git-lfs oid in "
        "Raudbjorn/ggml-llama.cpp @ 2b949f3d)",
        "<s>",
        "</s>",
    ),
    "llama3": Official(
        "llama3.3.jinja",
        "llama.cpp models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja (ye-NX/llama.cpp @ b354d7c9; "
        "Llama 3.1's template has the same fixed default date)",
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
}
#: Llama 3.2 dates its system header with the day of the render (``strftime_now``); ``llama3`` is 3.1/3.3's.
LLAMA_3_2 = Official(
    "llama3.2.jinja",
    "llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja (sha256 = the git-lfs oid in "
    "Raudbjorn/ggml-llama.cpp @ 2b949f3d)",
    "<|begin_of_text|>",
    "<|eot_id|>",
)


class OfficialRefusal(Exception):
    """What transformers' ``raise_exception`` raises (a ``TemplateError`` there; any exception will do here)."""


def _raise_exception(message: str) -> NoReturn:
    raise OfficialRefusal(message)


@cache
def _official_template(file: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = TODAY.strftime
    return env.from_string((FIXTURES / file).read_text(encoding="utf-8"))


def render_official(official: Official, messages: list[Message]) -> str:
    tokens = {"eos_token": official.eos_token}
    if official.bos_token is not None:
        tokens["bos_token"] = official.bos_token
    chat = [{"role": m.role, "content": m.content} for m in messages]
    return _official_template(official.file).render(
        messages=chat, add_generation_prompt=True, tools=None, documents=None, **tokens
    )


def gemma_convention(messages: list[Message]) -> list[Message]:
    """The gateway's Gemma convention (Gemma has no system role): ``[system S, user U, ...]`` → ``[user "S\\n\\nU",
    ...]``. The official template refuses the system message itself (``test_gemma_official_refuses_system``)."""
    if len(messages) >= 2 and messages[0].role == "system" and messages[1].role == "user":
        return [Message("user", messages[0].content + "\n\n" + messages[1].content), *messages[2:]]
    return messages


def expected(name: str, messages: list[Message]) -> str | OfficialRefusal:
    """The official render of ``messages`` for our template ``name``, or the official refusal."""
    if name == "gemma2":
        messages = gemma_convention(messages)
    try:
        return render_official(OFFICIAL[name], messages)
    except OfficialRefusal as refusal:
        return refusal


def S(text: str) -> Message:  # noqa: N802  (reads as a role letter in the shapes below)
    return Message("system", text)


def U(text: str) -> Message:  # noqa: N802
    return Message("user", text)


def A(text: str) -> Message:  # noqa: N802
    return Message("assistant", text)


SHAPES: dict[str, list[Message]] = {
    "single user": [U("Hi!")],
    "system and user": [S("You are a terse assistant."), U("Hi!")],
    "multi-turn with system": [S("Be brief."), U("Hi!"), A("Hello! How can I help?"), U("What is 2+2?")],
    "multi-turn without system": [U("Hi!"), A("Hello! How can I help?"), U("What is 2+2?")],
    "assistant last (prefill)": [U("Write a haiku."), A("Autumn")],
    "system, assistant last": [S("Be brief."), U("Hi!"), A("Hel")],
    "two user turns in a row": [U("first"), U("second")],
    "two assistant turns in a row": [U("q"), A("a1"), A("a2"), U("q2")],
    "starts with the assistant": [A("I begin."), U("q")],
    "empty user content": [U("")],
    "empty system content": [S(""), U("Hi!")],
    "empty assistant content": [U("Hi!"), A(""), U("again")],
    "system not first": [U("Hi!"), S("Late rule."), U("q")],
    "system at an even position": [U("Hi!"), A("Hello."), S("Late rule."), U("q")],
    "several system messages": [S("First."), S("Second."), U("q")],
    "system first and later": [S("First."), U("Hi!"), S("Second."), U("q")],
    "system only": [S("Only a system message.")],
    "unicode and template-looking text": [
        S("Réponds en français. 日本語も。"),
        U("{{ 7*7 }} {% if x %}{% endif %} <|im_end|> <|eot_id|> [INST] </s> <end_of_turn> <｜User｜> 🙂"),
        A("{{ raise_exception('no') }} <|im_start|>system"),
        U("{# comment #} \\n ${x}"),
    ],
    "whitespace at content edges": [S("  be brief \n"), U("\n  Hi!\t "), A("  Hello!  \n"), U(" What is 2+2? ")],
    "whitespace-only content": [S(" "), U("\n"), A("\t"), U("  ")],
    "earlier reasoning in an assistant turn": [
        U("Hi"),
        A("<think>\nThe user greets.\n</think>\n\nHello!"),
        U("And </think> in a user turn?"),
    ],
    "two reasoning closes": [U("q"), A("a</think>b</think>\n c"), U("q2")],
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_render_is_the_official_render(name: str, shape: str) -> None:
    messages = SHAPES[shape]
    official = expected(name, messages)
    if isinstance(official, OfficialRefusal):
        with pytest.raises(BadRequest) as caught:
            TEMPLATES[name].render(messages)
        assert caught.value.status == 400
        assert caught.value.data == {"template": name, "reason": str(official)}
        assert str(official) in caught.value.message
        assert caught.value.message.startswith(f"messages: the {name} chat template refuses this conversation")
    else:
        assert TEMPLATES[name].render(messages) == official


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_render_prompt_is_the_official_render_without_the_bos_the_tokenizer_adds(name: str) -> None:
    bos = OFFICIAL[name].bos_token
    sent = 0
    for messages in SHAPES.values():
        official = expected(name, messages)
        if isinstance(official, OfficialRefusal):
            continue  # test_render_is_the_official_render
        if TEMPLATES[name].tokenizer_adds_bos:
            assert bos is not None
            assert TEMPLATES[name].bos == bos
            assert official.startswith(bos)
            official = official[len(bos) :]
        assert render_prompt(name, messages) == official
        sent += 1
    assert sent >= 10


_CONTENTS = ["", " ", "text", "  padded \n", "a</think>b", "{{ x }}", "\n\nnl\n"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_every_role_sequence_up_to_four_messages(name: str) -> None:
    """Every sequence of system/user/assistant messages of length 1 to 4, contents taken in turn from ``_CONTENTS``."""
    roles: tuple[Role, ...] = ("system", "user", "assistant")
    contents = itertools.cycle(_CONTENTS)
    checked = 0
    for length in range(1, 5):
        for sequence in itertools.product(roles, repeat=length):
            messages = [Message(role, next(contents)) for role in sequence]
            official = expected(name, messages)
            try:
                ours: str | OfficialRefusal = TEMPLATES[name].render(messages)
            except BadRequest as exc:
                assert exc.data is not None
                ours = OfficialRefusal(exc.data["reason"])
            if isinstance(official, OfficialRefusal):
                assert isinstance(ours, OfficialRefusal), (sequence, ours)
                assert str(ours) == str(official), sequence
            else:
                assert ours == official, sequence
            checked += 1
    assert checked == 3 + 9 + 27 + 81


def test_gemma_official_refuses_system_and_the_gateway_merges_it_into_the_first_user_turn() -> None:
    """The one deliberate difference: the gateway sends ``[system, user, ...]`` to Gemma as one user turn."""
    messages = [S("Be brief."), U("Hi!")]
    with pytest.raises(OfficialRefusal, match="System role not supported"):
        render_official(OFFICIAL["gemma2"], messages)
    assert TEMPLATES["gemma2"].render(messages) == render_official(OFFICIAL["gemma2"], [U("Be brief.\n\nHi!")])


def test_llama3_is_llama_3_1_and_3_3_and_differs_from_3_2_only_in_the_date() -> None:
    """Llama 3.1/3.3 date the system header 26 Jul 2024 unless told otherwise; 3.2's template takes the day of the
    render from ``strftime_now``, which ours does not: that one line is the whole difference."""
    for shape in ("single user", "multi-turn with system", "whitespace at content edges"):
        messages = SHAPES[shape]
        ours = TEMPLATES["llama3"].render(messages)
        assert f"Today Date: {LLAMA_DEFAULT_DATE}\n" in ours
        assert ours == render_official(OFFICIAL["llama3"], messages)
        llama_3_2 = render_official(LLAMA_3_2, messages)
        assert f"Today Date: {TODAY:%d %b %Y}\n" in llama_3_2
        assert ours == llama_3_2.replace(f"Today Date: {TODAY:%d %b %Y}\n", f"Today Date: {LLAMA_DEFAULT_DATE}\n")


def test_the_old_goldens_are_the_official_renders() -> None:
    """tests/test_templates.py's worked conversation (written from notes) is what the official templates render."""
    from tests.test_templates import CONVERSATION, GOLDEN

    assert set(GOLDEN) == set(OFFICIAL) == set(TEMPLATE_NAMES)
    for name, golden in GOLDEN.items():
        assert expected(name, list(CONVERSATION)) == golden, name


def test_fixtures_are_the_official_sources() -> None:
    """Each fixture is listed in the folder's README.md with its source, and every template has one."""
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    files = {official.file for official in (*OFFICIAL.values(), LLAMA_3_2)}
    assert files == {path.name for path in FIXTURES.glob("*.jinja")}
    for file in files:
        assert f"`{file}`" in readme, file
