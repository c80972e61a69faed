"""``python -m statemachine``: the same as the `statemachine` command."""

from ._cli import main

main()
