"""Command line: ``modelgate serve | models | check-config | chat``. Placeholder until its own commit."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("modelgate CLI: not built yet")
