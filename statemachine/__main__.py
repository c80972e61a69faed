"""``python -m statemachine``: the same as the `statemachine` command."""

from .cli import main

main()
