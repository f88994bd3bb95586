"""What the upstream serializer accepts, as pydantic types for request models.

FastAPI parses request bodies with ``json.loads``, which accepts more than ``orjson.dumps`` — the
serializer of every upstream request and of our own error bodies — can write back: a lone surrogate
(``"\\ud800"``) in a string, an integer beyond 64 bits. Unchecked, such a value passed validation and
failed later as a 500 (issue 11, #8); with these types it is a 400 naming the field. (``/api/ai``
bodies are parsed by orjson, which refuses a lone surrogate and reads an integer beyond 64 bits as a float;
they carry no integer field. ``/v1`` bodies stay on ``json.loads`` for that reason: ``routes/direct.py``.)
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field

#: The integer range orjson serializes: signed and unsigned 64 bits.
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


def unicode_text(value: str) -> str:
    """``value`` if it is valid Unicode text (encodable as UTF-8), else ``ValueError`` saying why."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise ValueError(f"contains a lone surrogate (U+{code:04X} at index {exc.start}); send valid Unicode") from None
    return value


#: The largest count a catalogue takes (tokens, concurrency, seconds): a signed 32-bit integer, what providers'
#: token fields take (TGI's are u32) and the stores' INTEGER columns hold, well inside what JSON carries.
MAX_COUNT = 2**31 - 1
#: The most ``stop`` sequences a call may carry, and the longest one may be (characters), whatever its upstream takes:
#: bounds on hostile input (a server checks every sequence against the text after each token), far above what clients
#: send (Continue, to an OpenAI-compatible server that is not OpenAI: every stop word of its templates, a dozen for a
#: coder's autocomplete). An upstream's own lower limit is its provider's (``Provider.stop_limit``).
MAX_STOP_SEQUENCES = 64
MAX_STOP_CHARS = 1000
#: A count as the catalogue takes it.
Count = Annotated[int, Field(le=MAX_COUNT)]

#: A string an upstream request can carry.
WireText = Annotated[str, AfterValidator(unicode_text)]
#: How long a word a client picks from a set the API names (a ``type``, a ``detail``) may be: the longest is about 30
#: characters (``web_search_preview_2025_03_11``). A refusal names the value it refuses, so a longer one is refused
#: by its field, never repeated back (it could be as long as the body).
MAX_WORD = 64
#: Such a word.
WireWord = Annotated[str, Field(max_length=MAX_WORD), AfterValidator(unicode_text)]


def shown_word(value: object) -> str:
    """A value a client sent where a word was due, as a refusal quotes it: its ``repr``, at most ``MAX_WORD``
    characters of it (for a route that reads its body without a model, where ``WireWord`` cannot bound it)."""
    shown = repr(value)
    return shown if len(shown) <= MAX_WORD else shown[: MAX_WORD - 1] + "…"


#: An integer an upstream request can carry.
WireInt = Annotated[int, Field(ge=INT64_MIN, le=UINT64_MAX)]


#: How deep a client's JSON value (a tool's schema, a call's arguments) may nest. orjson writes at most 255
#: levels, and ours wrap a value in a few more (a Responses event echoing a schema, an Ollama message holding
#: a call's arguments): deeper ones passed validation and failed as a 500, or cut a stream already started. A
#: schema needs a handful of levels (OpenAI's structured outputs allow 10 of nesting, ~30 here).
MAX_JSON_DEPTH = 64


def writable_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``value`` (a parsed JSON document: a tool's schema, say) if every string and integer in it can be
    written upstream and it nests at most ``max_depth`` levels, else ``ValueError`` naming where not."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, dict | list) and depth >= max_depth:
            raise ValueError(f"{path or 'value'}: nested deeper than {max_depth} levels")
        if isinstance(item, str):
            try:
                unicode_text(item)
            except ValueError as exc:
                raise ValueError(f"{path or 'value'} {exc}") from None
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= UINT64_MAX:
            raise ValueError(f"{path or 'value'}: {item} is beyond a 64-bit integer")
        elif isinstance(item, dict):
            for key, inner in item.items():
                stack.append((f"{path}.{key}" if path else str(key), key, depth))
                stack.append((f"{path}.{key}" if path else str(key), inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", inner, depth + 1) for index, inner in enumerate(item))
    return value


#: A JSON object (a JSON Schema, say) that an upstream request can carry.
WireJSON = Annotated[dict[str, Any], AfterValidator(writable_json)]


#: How deep an opaque round-trip value (``opaque_object``) may nest. The ones modelgate carries are shallow: Gemini's
#: ``extra_content`` is ``{"google": {"thought_signature": "…"}}``, an OpenRouter reasoning detail a flat object.
MAX_OPAQUE_DEPTH = 8
#: How long one opaque value may be, written out: a thought signature is a few KiB of base64, and a reasoning detail
#: (a thinking block's text, or OpenAI's encrypted reasoning) tens of KiB. Far past both, and a bound of its own
#: besides the body's and the upstream event's.
MAX_OPAQUE_BYTES = 1024 * 1024
#: The most reasoning details (OpenRouter's ``reasoning_details``) one message or one streamed delta may carry.
MAX_REASONING_DETAILS = 1024


def opaque_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object an upstream request and a reply to the client can carry as it is: at most
    ``MAX_OPAQUE_DEPTH`` levels deep and ``MAX_OPAQUE_BYTES`` long; else ``TypeError``/``ValueError`` saying which
    bound it broke, never quoting it (it is the model's data, handed back unread: a thought signature, a reasoning
    block)."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    try:
        writable_json(value, max_depth=MAX_OPAQUE_DEPTH)
    except ValueError:
        # writable_json's reason names a path into the value: its keys are the model's data too.
        raise ValueError(
            f"nested deeper than {MAX_OPAQUE_DEPTH} levels, or holds text or a number JSON cannot carry"
        ) from None
    if len(orjson.dumps(value)) > MAX_OPAQUE_BYTES:
        raise ValueError(f"longer than {MAX_OPAQUE_BYTES} bytes")
    return value


#: An opaque JSON object a client hands back as it got it (``opaque_object``).
OpaqueJSON = Annotated[dict[str, Any], AfterValidator(opaque_object)]
