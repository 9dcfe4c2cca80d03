"""``python -m cifarkit``: the same as the ``cifarkit`` command."""

from cifarkit.cli import main

main()
