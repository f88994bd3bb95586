"""``python -m modelgate`` → the CLI."""

from modelgate.cli import main

main()
