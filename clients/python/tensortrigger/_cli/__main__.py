"""``python -m tensortrigger._cli``: the same as the ``tt`` command."""

from tensortrigger._cli import main

main()
