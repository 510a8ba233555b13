"""``python -m edgetl.cli``: the same as the ``edgetl`` command."""

from . import main

main()
