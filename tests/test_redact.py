"""``Redactor``: what counts as a credential in text bound for a client or a log."""

from __future__ import annotations

import pytest

from modelgate.redact import REDACTED, Redactor, url_secrets

OPENROUTER_KEY = "sk-or-v1-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CLOUDFLARE_TOKEN = "Zx8Qw7Er6Ty5Ui4Op3As2Df1Gh0JkLmNbVcXzAsD"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor([OPENROUTER_KEY, CLOUDFLARE_TOKEN, "abc"])


@pytest.mark.parametrize(
    "text",
    [
        f"invalid key {OPENROUTER_KEY}",
        f"unreadable stream chunk: {{broken Bearer {OPENROUTER_KEY}",
        "Key sk-or-v1-0a1b2c3d4e… is disabled",  # a partial key, elided by the upstream
        f"token {CLOUDFLARE_TOKEN[:10]}... expired",  # a prefix of a configured key without a known shape
        f'{{"auth":"{CLOUDFLARE_TOKEN}"}}',
        "Incorrect API key provided: sk-proj-********abcd",  # someone else's key shape
        "Token hf_QwErTyUiOp... lacks permission",
        "authorization: bearer some.jwt.value",
        # A key /admin/keys made at run time (maybe on another instance): no configured list holds it.
        "request id mg-Xq3_f9Lk2pQ-Zr8sTu1vWy4aBcDeFgHiJkLmNoPqRs",
        "mg-Xq3_f9Lk… was revoked",
    ],
)
def test_credentials_whole_partial_or_shaped_are_redacted(redactor: Redactor, text: str) -> None:
    cleaned = redactor.scrub(text)
    assert REDACTED in cleaned
    for fragment in (OPENROUTER_KEY[:10], CLOUDFLARE_TOKEN[:10], "sk-proj", "hf_QwErTy", "some.jwt", "mg-Xq3"):
        assert fragment not in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "the model task-force-7b is not available upstream",
        "set hf_token in your environment",
        "install hf_transfer for faster downloads",
        "deployed as mg-gateway-2 behind the balancer",
        "risk-free retry after 3s",
        "abc",  # a configured value shorter than the minimum is not treated as a secret
        "rate limited: 20 requests per minute",
    ],
)
def test_ordinary_text_is_left_alone(redactor: Redactor, text: str) -> None:
    assert redactor.scrub(text) == text


def test_a_key_the_admin_api_makes_has_the_redacted_shape(redactor: Redactor) -> None:
    from modelgate.runtime_keys import new_secret

    for _ in range(200):  # random keys: every one, not a lucky one
        secret = new_secret()
        assert redactor.scrub(f"id={secret};") == f"id={REDACTED};"


def test_bearer_keeps_its_scheme_word(redactor: Redactor) -> None:
    assert redactor.scrub("got Bearer xyz123 from you") == f"got Bearer {REDACTED} from you"


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        (
            "https://bob:pa%40ss-w0rd-xyz@proxy.example/v1",
            ["pa%40ss-w0rd-xyz", "pa@ss-w0rd-xyz", "Ym9iOnBhQHNzLXcwcmQteHl6"],  # as written, decoded, Basic
        ),
        ("https://tok3n-in-the-user-part@host.example", ["tok3n-in-the-user-part", "dG9rM24taW4tdGhlLXVzZXItcGFydDo="]),
    ],
)
def test_a_urls_user_information_and_its_basic_token_are_secrets(url: str, hidden: list[str]) -> None:
    redactor = Redactor(url_secrets(url))
    for value in hidden:
        assert redactor.scrub(f"got {value} from you") == f"got {REDACTED} from you"
    assert url_secrets("https://host.example/v1") == []
