"""OpenAI's Codex CLI (github.com/openai/codex, ``codex-rs``) against ``POST /v1/responses``: its exact request bodies
to a real modelgate over the fakes, and its stream parser's needs checked on what comes back.

Codex, configured with a custom provider (``wire_api = "responses"``, README "Responses API"), sends per turn
(``codex-api/src/common.rs`` ``ResponsesApiRequest``, built in ``core/src/client.rs``): ``model``,
``instructions``, ``input`` (its history as ``ResponseItem``s), ``tools``, ``tool_choice: "auto"``,
``parallel_tool_calls``, ``reasoning`` (``null``, or ``{effort, summary}`` when the model is taken to reason),
``store: false``, ``stream: true``, ``include`` (``["reasoning.encrypted_content"]`` beside a ``reasoning``,
else ``[]``), ``prompt_cache_key`` (the thread id), ``client_metadata`` (its installation id), and ``text``
(``verbosity``) only for models it knows to take one. A model it does not know gets the ``shell`` function tool,
``update_plan`` and ``view_image`` (``core/src/tools/spec.rs``; 0.171 sends ``exec_command``, ``write_stdin``,
``request_user_input``, ``view_image`` and goal tools), and, unless ``web_search = "disabled"``, the hosted
``{"type": "web_search"}`` tool (the ``cached`` default); 0.171 also sends its sub-agent tools as a ``namespace``
unless ``[agents] enabled = false``.

Later turns send the history back (``protocol/src/models.rs``): a ``reasoning`` item as
``{"type": "reasoning", "summary": [...], "encrypted_content": null}`` (its ``reasoning_text`` content and id
are not serialized), ``function_call`` items (``name``, ``arguments``, ``call_id``) and ``function_call_output``
items (``call_id``, ``output`` a string or content items).

The stream is read by ``codex-api/src/sse/responses.rs`` ``process_sse``: ``response.created`` (with a
``response``), ``response.output_text.delta``, ``response.reasoning_text.delta`` (``content_index``),
``response.output_item.done`` (each item deserialized as a ``ResponseItem``; one that fails is skipped), and
``response.completed``, whose ``response`` must deserialize as ``{id, usage?}`` with integer
``input_tokens``/``output_tokens``/``total_tokens`` and, when present, integer
``output_tokens_details.reasoning_tokens`` and ``input_tokens_details.cached_tokens``: a ``response.completed``
that does not parse fails the turn ("stream closed before response.completed"), as does a stream without one.
``CodexTurn`` below is that parser's contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests import test_openai_tools as chat_tools
from tests.fakes import Fakes, Reply
from tests.fakes._base import ToolCallScript

# The tools catalogue's server over the fakes (``t/deepseek``: OpenRouter, streams reasoning and tool calls).
service = chat_tools.service
MODEL = "t/deepseek"

INSTRUCTIONS = "You are a coding agent running in the Codex CLI, a terminal-based coding assistant."
#: ``create_shell_tool`` (``ConfigShellToolType::Default``, a model Codex does not know): a function tool.
SHELL_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}, "description": "The command to execute"},
            "workdir": {"type": "string", "description": "The working directory to execute the command in"},
            "timeout_ms": {"type": "number", "description": "The timeout for the command in milliseconds"},
            "sandbox_permissions": {"type": "string", "description": "Sandbox permissions for the command."},
            "justification": {"type": "string", "description": "Only set if sandbox_permissions is set."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}
PLAN_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "update_plan",
    "description": "Updates the task plan.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {
            "explanation": {"type": "string"},
            "plan": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"step": {"type": "string"}, "status": {"type": "string"}},
                    "required": ["step", "status"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["plan"],
        "additionalProperties": False,
    },
}
#: ``create_web_search_tool`` for ``web_search = "cached"``, Codex's default.
WEB_SEARCH_TOOL: dict[str, Any] = {"type": "web_search", "external_web_access": False}
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"

#: The history Codex opens a thread with: its developer (permissions) and environment messages, then the prompt.
OPENING: list[dict[str, Any]] = [
    {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": "<permissions instructions>sandbox: workspace-write"}],
    },
    {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "<environment_context><cwd>/repo</cwd></environment_context>"}],
    },
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
]
CALL_ARGUMENTS = '{"command":["ls"],"workdir":"/repo"}'
SHELL_CALL = ToolCallScript(name="shell", arguments=CALL_ARGUMENTS, id="call_ls")


def codex_request(
    input_items: list[dict[str, Any]], *, reasoning: bool = True, tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The body ``ResponsesApiRequest`` serializes, in its field order; ``reasoning`` as with
    ``model_supports_reasoning_summaries = true`` and ``model_reasoning_effort = "high"`` in config.toml."""
    return {
        "model": MODEL,
        "instructions": INSTRUCTIONS,
        "input": input_items,
        "tools": [SHELL_TOOL, PLAN_TOOL] if tools is None else tools,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "high", "summary": "auto"} if reasoning else None,
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"] if reasoning else [],
        "prompt_cache_key": THREAD,
        "client_metadata": {"x-codex-installation-id": "5f1c33d4-7a3e-4b55-9f0f-0d6a1c2b9e77"},
    }


# --- Codex's stream parser, as a contract ---------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _codex_usage_parses(usage: Any) -> bool:
    """``ResponseCompletedUsage``: i64 counts; the detail objects are ``Option``s, their one field an i64."""
    if usage is None:
        return True
    counts = all(_is_int(usage.get(name)) for name in ("input_tokens", "output_tokens", "total_tokens"))
    details = [("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens")]
    return counts and all(usage.get(obj) is None or _is_int(usage[obj].get(name)) for obj, name in details)


def _codex_item(item: dict[str, Any]) -> bool:
    """Whether ``ResponseItem`` deserializes ``item`` (the variants modelgate sends)."""
    kind = item.get("type")
    if kind == "message":
        return isinstance(item.get("role"), str) and all(
            part.get("type") in ("input_text", "input_image", "output_text") for part in item.get("content", ())
        )
    if kind == "reasoning":
        summary_ok = all(part.get("type") == "summary_text" for part in item.get("summary", ()))
        content_ok = all(part.get("type") in ("reasoning_text", "text") for part in item.get("content") or ())
        return isinstance(item.get("id"), str) and summary_ok and content_ok
    if kind == "function_call":
        return all(isinstance(item.get(name), str) for name in ("name", "arguments", "call_id"))
    return False


@dataclass
class CodexTurn:
    """What ``process_sse`` hands the agent loop for one streamed response."""

    items: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    reasoning: str = ""
    response_id: str | None = None
    usage: dict[str, Any] | None = None

    @classmethod
    def read(cls, body: str) -> CodexTurn:
        turn, created = cls(), False
        for line in body.splitlines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            kind = event["type"]
            if kind == "response.created":
                created = event.get("response") is not None
            elif kind == "response.output_text.delta":
                turn.text += event["delta"]
            elif kind == "response.reasoning_text.delta":
                assert _is_int(event.get("content_index")), event  # else Codex drops the delta
                turn.reasoning += event["delta"]
            elif kind == "response.output_item.done":
                assert _codex_item(event["item"]), f"Codex would skip this item: {event['item']}"
                turn.items.append(event["item"])
            elif kind == "response.completed":
                response = event["response"]
                assert isinstance(response.get("id"), str)
                usage = response.get("usage")
                assert _codex_usage_parses(usage), f"failed to parse ResponseCompleted: usage {usage}"
                turn.response_id, turn.usage = response["id"], usage
            elif kind in ("response.failed", "error"):
                raise AssertionError(f"the turn failed: {event}")
        assert created, "no response.created"
        assert turn.response_id is not None, "stream closed before response.completed"
        return turn


def post(service: str, body: dict[str, Any]) -> httpx.Response:
    # Codex's headers beside the body: none of them changes the answer.
    headers = {"session_id": THREAD, "originator": "codex_exec", "OpenAI-Beta": "responses=experimental"}
    return httpx.post(f"{service}/v1/responses", json=body, headers=headers, timeout=30)


def _dropped(answer: httpx.Response) -> set[str]:
    return set(filter(None, answer.headers.get("x-modelgate-dropped-params", "").split(",")))


# --- the agent loop ------------------------------------------------------------------------------------


def test_first_turn_with_reasoning_is_served_as_codex_reads_it(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(
        Reply(reasoning=["I should ", "list them."], tokens=(), tool_calls=(SHELL_CALL,), finish="tool_calls")
    )
    answer = post(service, codex_request(OPENING))
    assert answer.status_code == 200, answer.text
    turn = CodexTurn.read(answer.text)
    assert [item["type"] for item in turn.items] == ["reasoning", "function_call"]
    assert turn.reasoning == "I should list them."
    call = turn.items[1]
    assert (call["name"], call["call_id"], json.loads(call["arguments"])) == (
        "shell",
        "call_ls",
        {"command": ["ls"], "workdir": "/repo"},
    )
    assert turn.usage is not None
    # The provider did not count reasoning apart: unknown, and still a usage Codex parses.
    assert turn.usage["output_tokens_details"] is None
    # What nobody here can make or use is accepted and named; the effort is carried, the include honoured.
    assert {"reasoning.summary", "prompt_cache_key", "client_metadata"} <= _dropped(answer)
    assert "include" not in _dropped(answer)
    sent = fakes.openrouter.last.json
    assert sent["reasoning"] == {"effort": "high"}
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["shell", "update_plan"]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "user"]


def test_follow_up_turn_sends_back_reasoning_call_and_output(service: str, fakes: Fakes) -> None:
    """The second request of the loop: the history with the first answer's items as Codex serializes them."""
    fakes.openrouter.script(Reply(reasoning=["Done."], tokens=["There are ", "two files."]))
    history = [
        *OPENING,
        {"type": "reasoning", "summary": [], "encrypted_content": None},
        {"type": "function_call", "name": "shell", "arguments": CALL_ARGUMENTS, "call_id": "call_ls"},
        {"type": "function_call_output", "call_id": "call_ls", "output": "README.md\nsrc\n"},
    ]
    answer = post(service, codex_request(history))
    assert answer.status_code == 200, answer.text
    turn = CodexTurn.read(answer.text)
    assert [item["type"] for item in turn.items] == ["reasoning", "message"]
    assert turn.text == "There are two files."
    sent = fakes.openrouter.last.json["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_ls"
    assert sent[-1] == {"role": "tool", "content": "README.md\nsrc\n", "tool_call_id": "call_ls"}
    assert "reasoning" not in json.dumps(sent)  # an earlier answer's reasoning is not replayed


def test_items_with_ids_status_summaries_and_encrypted_content_are_taken(service: str, fakes: Fakes) -> None:
    """History from another provider (OpenAI's own, or an app that keeps every field): ids, statuses, a summary
    and encrypted reasoning. Another server's reasoning is not replayed (and named dropped); the rest is read as
    before."""
    fakes.openrouter.script(Reply(tokens=["ok"]))
    history = [
        *OPENING,
        {
            "type": "reasoning",
            "id": "rs_68af",
            "summary": [{"type": "summary_text", "text": "**Listing files**"}],
            "encrypted_content": "gAAAAABo-opaque",
            "status": "completed",
        },
        {
            "type": "function_call",
            "id": "fc_68af",
            "status": "completed",
            "name": "shell",
            "arguments": CALL_ARGUMENTS,
            "call_id": "call_ls",
        },
        {"type": "function_call_output", "call_id": "call_ls", "output": [{"type": "input_text", "text": "src"}]},
        {
            "type": "message",
            "id": "msg_68af",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "One directory.", "annotations": []}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks."}]},
    ]
    answer = post(service, codex_request(history))
    assert answer.status_code == 200, answer.text
    assert CodexTurn.read(answer.text).text == "ok"
    sent = json.dumps(fakes.openrouter.last.json["messages"])
    assert "opaque" not in sent and "Listing files" not in sent
    assert "input.reasoning.encrypted_content" in _dropped(answer)  # another server's: no model here reads it


def test_a_turn_without_reasoning_reports_nothing_it_did_not_ask(service: str, fakes: Fakes) -> None:
    """``reasoning: null`` and ``include: []`` (a model Codex does not take to reason) ask for nothing."""
    fakes.openrouter.script(Reply(tokens=["Hi."]))
    answer = post(service, codex_request(OPENING, reasoning=False))
    assert answer.status_code == 200, answer.text
    assert CodexTurn.read(answer.text).text == "Hi."
    assert _dropped(answer) == {"prompt_cache_key", "client_metadata"}


#: Codex 0.171's sub-agent tools (``[agents]``, on by default): a ``namespace`` of function tools.
AGENTS_TOOL: dict[str, Any] = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Sub-agents.",
    "tools": [{**PLAN_TOOL, "name": "spawn_agent"}],
}


def test_codex_default_web_search_is_refused_naming_the_setting(service: str, fakes: Fakes) -> None:
    """A hosted search the model cannot run is not a hint: refused, with the Codex setting that leaves it out."""
    answer = post(service, codex_request(OPENING, tools=[SHELL_TOOL, WEB_SEARCH_TOOL]))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "tools"
    assert "tools[1]: tools of type 'web_search' are not supported" in error["message"]
    assert 'web_search = "disabled"' in error["message"]
    assert fakes.openrouter.requests == []


SPAWN_CALL = ToolCallScript(name="spawn_agent", arguments='{"plan":[]}', id="call_spawn")


@pytest.mark.parametrize("stream", [True, False])
def test_namespace_tools_are_offered_and_their_calls_name_the_namespace(
    service: str, fakes: Fakes, stream: bool
) -> None:
    """Found from outside: Codex 0.171 sends its sub-agent tools as a ``namespace`` (on by default), and every
    request was a 400 until ``[agents] enabled = false``. A namespace's functions are functions: the model is
    offered them by name, and its call comes back with the ``namespace`` Codex routes it by
    (``core/src/tools/router.rs``: ``ToolName::new(namespace, name)``; without it the call is "unsupported")."""
    fakes.openrouter.script(Reply(tokens=(), tool_calls=(SPAWN_CALL,), finish="tool_calls"))
    body = {**codex_request(OPENING, tools=[SHELL_TOOL, AGENTS_TOOL]), "stream": stream}
    answer = post(service, body)
    assert answer.status_code == 200, answer.text
    sent = fakes.openrouter.last.json["tools"]
    assert [tool["function"]["name"] for tool in sent] == ["shell", "spawn_agent"]
    assert sent[1]["function"]["parameters"] == PLAN_TOOL["parameters"]
    assert "Sub-agents." not in json.dumps(fakes.openrouter.last.json)
    assert "tools.namespace.description" in _dropped(answer)  # the namespace's own: no place for it among functions
    if stream:
        calls = CodexTurn.read(answer.text).items
        tools = None
    else:
        calls = answer.json()["output"]
        tools = answer.json()["tools"]
    assert [(c["type"], c["name"], c.get("namespace"), c["call_id"]) for c in calls] == [
        ("function_call", "spawn_agent", "multi_agent_v1", "call_spawn")
    ]
    if tools is not None:  # echoed as sent, a namespace of its function
        assert [tool["type"] for tool in tools] == ["function", "namespace"]
        assert tools[1]["name"] == "multi_agent_v1" and tools[1]["tools"][0]["name"] == "spawn_agent"


def test_a_namespaced_call_sent_back_is_the_function_call(service: str, fakes: Fakes) -> None:
    """The next turn: Codex replays the call with its ``namespace``; it answers the function of that name."""
    fakes.openrouter.script(Reply(tokens=["Spawned."]))
    history = [
        *OPENING,
        {
            "type": "function_call",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "arguments": '{"plan":[]}',
            "call_id": "call_spawn",
        },
        {"type": "function_call_output", "call_id": "call_spawn", "output": "agent 1 started"},
    ]
    answer = post(service, codex_request(history, tools=[SHELL_TOOL, AGENTS_TOOL]))
    assert answer.status_code == 200, answer.text
    sent = fakes.openrouter.last.json["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "spawn_agent"
    assert sent[-1] == {"role": "tool", "content": "agent 1 started", "tool_call_id": "call_spawn"}


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        ([{**AGENTS_TOOL, "tools": [{**SHELL_TOOL}]}, SHELL_TOOL], "tools[1].name: 'shell' is also tools[0].tools[0]"),
        ([{**AGENTS_TOOL, "tools": [{"type": "custom", "name": "x"}]}], "tools[0].tools[0]: tools of type 'custom'"),
        ([{**AGENTS_TOOL, "tools": []}], "tools[0].tools: a namespace needs at least one tool"),
        ([{"type": "namespace", "tools": [PLAN_TOOL]}], "tools[0].name: required"),
        ([{**AGENTS_TOOL, "strict": True, "x": 1}], "tools[0]: strict, x: not a namespace's field"),
    ],
)
def test_namespaces_the_chat_tools_cannot_tell_apart_are_refused(
    service: str, fakes: Fakes, tools: list[dict[str, Any]], words: str
) -> None:
    """The model is offered a namespace's functions by their own names: two tools of one name could not be told
    apart when called, so they are a 400, as are tools inside it the chat types have no form for."""
    answer = post(service, codex_request(OPENING, tools=tools))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "tools"
    assert words in error["message"]
    assert fakes.openrouter.requests == []


#: A client's value far longer than any name the API has: what a refusal must name the field of, not repeat.
LONG = "Q" * 20_000


@pytest.mark.parametrize(
    ("tools", "history", "field"),
    [
        ([{**AGENTS_TOOL, LONG: 1}], [], "tools[0]"),
        ([{**AGENTS_TOOL, "tools": [{"type": LONG, "name": "x"}]}], [], "tools.0.tools.0.type"),
        ([{"type": LONG}], [], "tools.0.type"),
        ([{**AGENTS_TOOL, "tools": [{**PLAN_TOOL, LONG: 1}]}], [], "tools[0].tools[0]"),
        (
            [SHELL_TOOL],
            [
                {"type": "function_call", "name": "shell", "arguments": "{}", "call_id": "c"},
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "detail": LONG}]},
            ],
            "input.2.output.0.detail",
        ),
        ([SHELL_TOOL], [{"type": LONG}], "input.1.type"),
        ([SHELL_TOOL], [{"type": "message", "role": LONG, "content": "x"}], "input.1.role"),
    ],
    ids=["namespace-field", "namespaced-type", "tool-type", "function-field", "image-detail", "item", "role"],
)
def test_a_long_value_a_client_sent_is_refused_by_its_field_not_echoed(
    service: str, fakes: Fakes, tools: list[dict[str, Any]], history: list[dict[str, Any]], field: str
) -> None:
    """A namespace's or a function's unknown field and a tool's, an item's or an image's ``type`` or ``detail`` came
    back whole in the 400's message (20 000 characters here; as much as the body holds): a refusal names the field."""
    answer = post(service, codex_request([*OPENING[:1], *history], tools=tools))
    assert answer.status_code == 400, answer.text[:300]
    message = answer.json()["error"]["message"]
    assert field in message, message[:300]
    assert "QQQQ" not in answer.text
    assert fakes.openrouter.requests == []


# --- verbosity, on both OpenAI routes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "field"),
    [("responses", {"text": {"verbosity": "medium"}}), ("chat/completions", {"verbosity": "medium"})],
)
def test_the_default_verbosity_is_accepted_and_reported(service: str, fakes: Fakes, route: str, field: Any) -> None:
    """``medium`` is OpenAI's default: asking for it asks for an ordinary answer, which is what is given."""
    fakes.openrouter.script(Reply(tokens=["Hi."]))
    opening = {"input": "Hi"} if route == "responses" else {"messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{service}/v1/{route}", json={"model": MODEL, **opening, **field}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert _dropped(answer) == {"text.verbosity" if route == "responses" else "verbosity"}


@pytest.mark.parametrize(
    ("route", "field", "param"),
    [
        ("responses", {"text": {"verbosity": "low"}}, "text.verbosity"),
        ("chat/completions", {"verbosity": "high"}, "verbosity"),
        ("responses", {"text": {"verbosity": LONG}}, "text.verbosity"),
        ("chat/completions", {"verbosity": LONG}, "verbosity"),
    ],
    ids=["low", "high", "long-responses", "long-chat"],
)
def test_another_verbosity_is_refused(service: str, fakes: Fakes, route: str, field: Any, param: str) -> None:
    """A shorter or longer answer than usual is an answer no provider here can be held to; a long value is named,
    not repeated back (it was, whole)."""
    opening = {"input": "Hi"} if route == "responses" else {"messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{service}/v1/{route}", json={"model": MODEL, **opening, **field}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert "QQQQ" not in answer.text
    assert fakes.openrouter.requests == []


# --- view_image ---------------------------------------------------------------------------------------------

#: ``create_view_image_tool`` (``tools/src/view_image.rs``): sent to every model Codex does not know.
VIEW_IMAGE_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "view_image",
    "description": "View a local image from the filesystem.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "Local filesystem path to an image file"}},
        "required": ["path"],
        "additionalProperties": False,
    },
}
PNG = "data:image/png;base64,iVBORw0KGgo="


def _viewed(*output: dict[str, Any], then: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The history after the model called ``view_image``: Codex answers with the image as the call's output
    (``FunctionCallOutputContentItem::InputImage``, an array ``output``), not as a user message."""
    call = {"type": "function_call", "name": "view_image", "arguments": '{"path":"/repo/a.png"}', "call_id": "call_img"}
    result = {"type": "function_call_output", "call_id": "call_img", "output": list(output)}
    return [*OPENING, call, result, *(then or [])]


def test_a_view_image_output_reaches_the_model_as_an_image(service: str, fakes: Fakes) -> None:
    """Found from outside: the turn after Codex's ``view_image`` was a 400 ("content of type 'input_image' is not
    supported in a function call's output"), so an agent that looked at a screenshot could go no further. Chat
    tool messages take only text: the image follows the tool results as a user message, which says whose it is."""
    fakes.openrouter.script(Reply(tokens=["A red square."]))
    history = _viewed(
        {"type": "input_text", "text": "a.png (1x1)"},
        {"type": "input_image", "image_url": PNG},
        then=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Describe it."}]}],
    )
    answer = post(service, codex_request(history, tools=[SHELL_TOOL, VIEW_IMAGE_TOOL]))
    assert answer.status_code == 200, answer.text
    assert CodexTurn.read(answer.text).text == "A red square."
    sent = fakes.openrouter.last.json["messages"]
    tool, image, prompt = sent[-3:]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_img"
    assert tool["content"].startswith("a.png (1x1)")
    assert image == {
        "role": "user",
        "content": [
            {"type": "text", "text": "The image output of tool call call_img:"},
            {"type": "image_url", "image_url": {"url": PNG}},
        ],
    }
    assert prompt == {"role": "user", "content": "Describe it."}
    assert _dropped(answer) == {"reasoning.summary", "prompt_cache_key", "client_metadata"}


def test_a_view_image_output_to_a_model_without_vision_is_a_400(service: str, fakes: Fakes) -> None:
    """The image is input like any other: a model without the vision capability refuses it by name."""
    body = {**codex_request(_viewed({"type": "input_image", "image_url": PNG}), reasoning=False), "model": "t/qwen"}
    answer = post(service, body)
    assert answer.status_code == 400, answer.text
    assert "vision" in answer.json()["error"]["message"]
    assert fakes.huggingface.requests == []


def test_images_of_parallel_calls_follow_all_their_results(service: str, fakes: Fakes) -> None:
    """Two calls of one turn: their results stay right after the assistant's calls (a message between them
    would part a result from its call); the images come after both, each named by its call."""
    fakes.openrouter.script(Reply(tokens=["Same."]))
    calls = [
        {"type": "function_call", "name": "view_image", "arguments": f'{{"path":"/{n}.png"}}', "call_id": f"call_{n}"}
        for n in ("a", "b")
    ]
    outputs = [
        {"type": "function_call_output", "call_id": f"call_{n}", "output": [{"type": "input_image", "image_url": PNG}]}
        for n in ("a", "b")
    ]
    answer = post(service, codex_request([*OPENING, *calls, *outputs], tools=[VIEW_IMAGE_TOOL]))
    assert answer.status_code == 200, answer.text
    sent = fakes.openrouter.last.json["messages"]
    assert [m["role"] for m in sent[-4:]] == ["assistant", "tool", "tool", "user"]
    assert [part.get("text") for part in sent[-1]["content"]] == [
        "The image output of tool call call_a:",
        None,
        "The image output of tool call call_b:",
        None,
    ]
