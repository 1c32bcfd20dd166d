"""The ``tt`` command line, built on ``Client``. Needs the ``cli`` extra (click and rich)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from tensortrigger._cli.commands import cli
    except ModuleNotFoundError as error:
        if error.name not in ("click", "rich"):
            raise
        print(f"tt needs the optional '{error.name}' package: pip install 'tensortrigger-client[cli]'", file=sys.stderr)
        sys.exit(1)
    cli(prog_name="tt")
