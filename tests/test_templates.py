"""Chat templates render byte-for-byte what the official templates render (providers.md section 7 goldens)."""

# ruff: noqa: RUF001  (DeepSeek's special tokens are spelled with full-width bars)

from __future__ import annotations

import pytest

from modelgate.chat import Message
from modelgate.errors import BadRequest
from modelgate.templates import TEMPLATE_NAMES, TEMPLATES, ChatTemplate, render_prompt

SYSTEM = Message("system", "You are a terse assistant.")
HI = Message("user", "Hi!")
HELLO = Message("assistant", "Hello! How can I help?")
QUESTION = Message("user", "What is 2+2?")
CONVERSATION = (SYSTEM, HI, HELLO, QUESTION)

# apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) with each official template
# (Gemma: after merging the system text into the first user turn, which its template cannot take).
GOLDEN = {
    "gemma2": (
        "<bos><start_of_turn>user\nYou are a terse assistant.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    ),
    "phi3": (
        "<|system|>\nYou are a terse assistant.<|end|>\n<|user|>\nHi!<|end|>\n"
        "<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "deepseek-r1": (
        "<｜begin▁of▁sentence｜>You are a terse assistant.<｜User｜>Hi!<｜Assistant｜>Hello! How can I help?"
        "<｜end▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    ),
    "mistral-v3": (
        "<s>[INST] Hi![/INST] Hello! How can I help?</s>[INST] You are a terse assistant.\n\nWhat is 2+2?[/INST]"
    ),
    "mistral-nemo": (
        "<s>[INST]Hi![/INST]Hello! How can I help?</s>[INST]You are a terse assistant.\n\nWhat is 2+2?[/INST]"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


def test_names_are_the_sorted_registry() -> None:
    assert tuple(sorted(TEMPLATES)) == TEMPLATE_NAMES
    assert set(TEMPLATE_NAMES) == set(GOLDEN)
    assert all(template.name == name for name, template in TEMPLATES.items())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_render_of_the_worked_conversation(name: str) -> None:
    assert TEMPLATES[name].render(CONVERSATION) == GOLDEN[name]


def test_chatml_without_system_inserts_qwens_default_system_prompt() -> None:
    assert TEMPLATES["chatml"].render((HI, HELLO, QUESTION)) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_renders_a_later_system_message_in_place() -> None:
    rendered = TEMPLATES["chatml"].render((HI, Message("system", "Be brief."), QUESTION))
    assert "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" in rendered


@pytest.mark.parametrize("name", ["mistral-v3", "mistral-nemo"])
def test_mistral_puts_the_system_prompt_into_the_last_user_turn_only(name: str) -> None:
    rendered = TEMPLATES[name].render(CONVERSATION)
    assert rendered.count("You are a terse assistant.") == 1
    assert rendered.index("You are a terse assistant.") > rendered.index("Hello! How can I help?")


def test_mistral_drops_the_system_prompt_when_the_chat_does_not_end_on_a_user_turn() -> None:
    assert TEMPLATES["mistral-v3"].render((SYSTEM, HI, HELLO)) == "<s>[INST] Hi![/INST] Hello! How can I help?</s>"


def test_mistral_v3_strips_assistant_text_and_nemo_keeps_it() -> None:
    padded = (HI, Message("assistant", "  Hello!  "), QUESTION)
    assert TEMPLATES["mistral-v3"].render(padded) == "<s>[INST] Hi![/INST] Hello!</s>[INST] What is 2+2?[/INST]"
    assert TEMPLATES["mistral-nemo"].render(padded) == "<s>[INST]Hi![/INST]  Hello!  </s>[INST]What is 2+2?[/INST]"


def test_deepseek_r1_strips_earlier_reasoning_up_to_the_last_think_close() -> None:
    thinking = Message("assistant", "<think>\nThe user greets.\n</think>\n\nHello! How can I help?")
    assert TEMPLATES["deepseek-r1"].render((HI, thinking, QUESTION)) == (
        "<｜begin▁of▁sentence｜><｜User｜>Hi!<｜Assistant｜>\n\nHello! How can I help?<｜end▁of▁sentence｜>"
        "<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    )


def test_deepseek_r1_uses_the_last_system_message_glued_to_bos() -> None:
    rendered = TEMPLATES["deepseek-r1"].render((SYSTEM, HI, Message("system", "Second."), QUESTION))
    assert rendered.startswith("<｜begin▁of▁sentence｜>Second.<｜User｜>Hi!<｜User｜>What is 2+2?")


def test_gemma_strips_content_whitespace_and_phi3_does_not() -> None:
    padded = (Message("user", "  Hi!\n"),)
    assert TEMPLATES["gemma2"].render(padded) == "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n"
    assert TEMPLATES["phi3"].render(padded) == "<|user|>\n  Hi!\n<|end|>\n<|assistant|>\n"


def test_llama3_without_system_still_emits_the_dated_system_header() -> None:
    assert TEMPLATES["llama3"].render((HI,)) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_gemma_refuses_roles_that_do_not_alternate() -> None:
    with pytest.raises(BadRequest) as caught:
        TEMPLATES["gemma2"].render((HI, QUESTION))
    assert caught.value.status == 400
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in caught.value.message
    assert caught.value.data == {
        "template": "gemma2",
        "reason": "Conversation roles must alternate user/assistant/user/assistant/...",
    }


def test_gemma_refuses_a_system_message_it_cannot_merge() -> None:
    with pytest.raises(BadRequest, match="System role not supported"):
        TEMPLATES["gemma2"].render((SYSTEM, HELLO))


def test_gemma_refuses_a_conversation_starting_with_the_assistant() -> None:
    with pytest.raises(BadRequest, match="must alternate"):
        TEMPLATES["gemma2"].render((HELLO, QUESTION))


@pytest.mark.parametrize("name", ["mistral-v3", "mistral-nemo"])
def test_mistral_refuses_roles_that_do_not_alternate(name: str) -> None:
    with pytest.raises(BadRequest, match="After the optional system message, conversation roles must alternate"):
        TEMPLATES[name].render((SYSTEM, HI, QUESTION))


def test_mistral_refuses_a_system_message_after_the_first_position() -> None:
    with pytest.raises(BadRequest, match="Only user and assistant roles are supported"):
        TEMPLATES["mistral-v3"].render((HI, Message("system", "Late."), QUESTION))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_an_empty_conversation_is_a_bad_request(name: str) -> None:
    with pytest.raises(BadRequest, match="at least one message"):
        TEMPLATES[name].render(())


def test_content_is_data_not_template_code() -> None:
    rendered = TEMPLATES["chatml"].render((Message("user", "{{ 7*7 }} {% if x %}"),))
    assert "<|im_start|>user\n{{ 7*7 }} {% if x %}<|im_end|>\n" in rendered


@pytest.mark.parametrize(
    ("name", "bos"),
    [
        ("gemma2", "<bos>"),
        ("llama3", "<|begin_of_text|>"),
        ("mistral-v3", "<s>"),
        ("mistral-nemo", "<s>"),
        ("deepseek-r1", "<｜begin▁of▁sentence｜>"),
    ],
)
def test_render_prompt_strips_the_bos_the_tokenizer_adds_again(name: str, bos: str) -> None:
    assert TEMPLATES[name].tokenizer_adds_bos
    prompt = render_prompt(name, CONVERSATION)
    assert GOLDEN[name].startswith(bos)
    assert prompt == GOLDEN[name][len(bos) :]


@pytest.mark.parametrize("name", ["chatml", "phi3"])
def test_render_prompt_keeps_templates_without_bos_unchanged(name: str) -> None:
    assert TEMPLATES[name].bos is None
    assert render_prompt(name, CONVERSATION) == GOLDEN[name]


def test_render_prompt_rejects_an_unknown_template() -> None:
    with pytest.raises(BadRequest, match="unknown chat template 'vicuna'"):
        render_prompt("vicuna", CONVERSATION)


def test_only_deepseek_r1_starts_in_reasoning() -> None:
    assert [name for name, t in TEMPLATES.items() if t.starts_in_reasoning] == ["deepseek-r1"]


def test_templates_compile_lazily_and_once() -> None:
    template = ChatTemplate(name="probe", bos=None, tokenizer_adds_bos=False, starts_in_reasoning=False, source="x")
    assert "_compiled" not in vars(template)  # nothing compiled at construction (or import)
    template.render((HI,))
    compiled = vars(template)["_compiled"]
    template.render((HI,))
    assert vars(template)["_compiled"] is compiled
