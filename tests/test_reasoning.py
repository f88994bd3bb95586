"""ReasoningSplitter: <think> blocks split out of streamed text, whatever the chunk boundaries."""

from __future__ import annotations

import pytest

from modelgate.chat import ReasoningDelta, TextDelta
from modelgate.reasoning import MAX_HELD, ReasoningSplitter

Delta = TextDelta | ReasoningDelta


def merged(deltas: list[Delta]) -> list[tuple[str, str]]:
    """Adjacent deltas of one kind joined: what a client shows, independent of chunking."""
    out: list[tuple[str, str]] = []
    for delta in deltas:
        kind = "reasoning" if isinstance(delta, ReasoningDelta) else "text"
        assert delta.text, "no empty deltas"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + delta.text)
        else:
            out.append((kind, delta.text))
    return out


def run(chunks: list[str], *, starts_in_reasoning: bool = False) -> list[tuple[str, str]]:
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    deltas: list[Delta] = []
    for chunk in chunks:
        deltas += splitter.feed(chunk)
    deltas += splitter.flush()
    return merged(deltas)


CASES: list[tuple[str, bool, list[tuple[str, str]]]] = [
    # (stream, starts_in_reasoning, expected)
    (
        "<think>\nThe user greets.\n</think>\n\nHello!",
        False,
        [("reasoning", "\nThe user greets.\n"), ("text", "Hello!")],
    ),
    ("Plain answer, no reasoning.", False, [("text", "Plain answer, no reasoning.")]),
    (
        "Okay, 2+2.\n</think>\n\nIt is 4.",  # R1-Distill: the prompt opened the block
        True,
        [("reasoning", "Okay, 2+2.\n"), ("text", "It is 4.")],
    ),
    ("<think>\nHmm.\n</think>\n\n4", True, [("reasoning", "\nHmm.\n"), ("text", "4")]),
    ("Use the <think> tag like <think>x</think>.", False, [("text", "Use the <think> tag like <think>x</think>.")]),
    (
        "<think>a < b and </thin is not a tag</think>Answer: </think> stays",
        False,
        [("reasoning", "a < b and </thin is not a tag"), ("text", "Answer: </think> stays")],
    ),
    ("\n <think>r</think>t", False, [("text", "\n "), ("reasoning", "r"), ("text", "t")]),
    ("<think>never closed (length limit)", False, [("reasoning", "never closed (length limit)")]),
    ("<thin", False, [("text", "<thin")]),
    ("</thi", True, [("reasoning", "</thi")]),
    ("<think></think>", False, []),
    ("ünïcödé <think>🙂</think>", False, [("text", "ünïcödé <think>🙂</think>")]),
    # The blank lines after </think> are dropped, whatever they are made of; nothing else is.
    ("<think>r</think>\r\n \n\t\n    code()\n\nmore", False, [("reasoning", "r"), ("text", "    code()\n\nmore")]),
    ("<think>r</think>  answer", False, [("reasoning", "r"), ("text", "  answer")]),
    ("<think>r</think>\n\n", False, [("reasoning", "r")]),
    ("Plain\n\nanswer", False, [("text", "Plain\n\nanswer")]),
]


@pytest.mark.parametrize(("stream", "starts_in_reasoning", "expected"), CASES)
def test_whole_stream(stream: str, starts_in_reasoning: bool, expected: list[tuple[str, str]]) -> None:
    assert run([stream], starts_in_reasoning=starts_in_reasoning) == expected


@pytest.mark.parametrize(("stream", "starts_in_reasoning", "expected"), CASES)
def test_every_split_point(stream: str, starts_in_reasoning: bool, expected: list[tuple[str, str]]) -> None:
    for cut in range(len(stream) + 1):
        got = run([stream[:cut], stream[cut:]], starts_in_reasoning=starts_in_reasoning)
        assert got == expected, f"split at {cut}: {stream[:cut]!r} | {stream[cut:]!r}"


@pytest.mark.parametrize(("stream", "starts_in_reasoning", "expected"), CASES)
def test_every_pair_of_split_points(stream: str, starts_in_reasoning: bool, expected: list[tuple[str, str]]) -> None:
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert run(chunks, starts_in_reasoning=starts_in_reasoning) == expected, chunks


@pytest.mark.parametrize(("stream", "starts_in_reasoning", "expected"), CASES)
def test_one_character_at_a_time(stream: str, starts_in_reasoning: bool, expected: list[tuple[str, str]]) -> None:
    assert run(list(stream), starts_in_reasoning=starts_in_reasoning) == expected


def test_text_is_released_as_soon_as_it_cannot_be_a_tag() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>I am thinking") == [ReasoningDelta("I am thinking")]
    assert splitter.feed(" more </thi") == [ReasoningDelta(" more ")]  # "</thi" held back
    assert splitter.feed("nk>\n\n") == []  # only the separator so far
    assert splitter.feed("Done") == [TextDelta("Done")]
    assert splitter.feed(" <think>") == [TextDelta(" <think>")]  # the answer streams through untouched
    assert splitter.flush() == []


def test_a_held_back_prefix_that_turns_out_not_to_be_a_tag_is_released() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<th") == []
    assert splitter.feed("ese are words") == [TextDelta("<these are words")]


def test_starts_in_reasoning_releases_reasoning_before_the_close() -> None:
    splitter = ReasoningSplitter(starts_in_reasoning=True)
    assert splitter.feed("Step one.") == [ReasoningDelta("Step one.")]
    assert splitter.feed("</think>Four.") == [TextDelta("Four.")]


def test_flush_is_empty_when_nothing_is_held() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("") == []
    assert splitter.flush() == []


#: A million characters of whitespace, in a thousand deltas.
WHITESPACE = [" " * 999 + "\n"] * 1000


def fed(splitter: ReasoningSplitter, chunks: list[str]) -> list[Delta]:
    deltas: list[Delta] = []
    for chunk in chunks:
        deltas += splitter.feed(chunk)
    return deltas


@pytest.mark.parametrize(("starts_in_reasoning", "kind"), [(False, "text"), (True, "reasoning")])
def test_endless_whitespace_before_the_block_is_not_held_without_bound(starts_in_reasoning: bool, kind: str) -> None:
    """Whitespace may be the lead of a ``<think>``, so it is held back; an upstream that streams nothing else (its
    refusal or tool-call deltas keeping the stream's byte limit quiet) made that grow with the reply. At most
    ``MAX_HELD`` characters wait: the rest goes out as the kind of text it is whatever follows."""
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    deltas = fed(splitter, WHITESPACE)
    assert sum(len(d.text) for d in deltas) >= len("".join(WHITESPACE)) - MAX_HELD
    deltas += splitter.feed("<think>r</think>Answer") + splitter.flush()
    assert merged(deltas) == [(kind, "".join(WHITESPACE) if kind == "text" else "".join(WHITESPACE) + "r")] + (
        [("reasoning", "r"), ("text", "Answer")] if kind == "text" else [("text", "Answer")]
    )


def test_endless_blank_lines_after_the_block_are_not_held_without_bound() -> None:
    splitter = ReasoningSplitter()
    assert fed(splitter, ["<think>r</think>", *WHITESPACE]) == [ReasoningDelta("r")]  # the separator: dropped
    assert len(splitter._pending) <= MAX_HELD  # what is held back (nothing else tells how much)
    assert splitter.feed("  x") == [TextDelta("  x")]  # as held whole: the first line's indentation stays


def test_a_line_of_spaces_after_the_block_longer_than_what_is_held_begins_the_answer() -> None:
    splitter = ReasoningSplitter()
    deltas = fed(splitter, ["<think>r</think>\n\n", *[" " * 100] * 100])
    assert merged(deltas)[1:] and len(merged(deltas)[1][1]) >= 10_000 - MAX_HELD
    deltas += splitter.feed("x") + splitter.flush()
    assert merged(deltas) == [("reasoning", "r"), ("text", " " * 10_000 + "x")]
