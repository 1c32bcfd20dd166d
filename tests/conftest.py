"""Fixtures shared by the whole suite: real services (PostgreSQL, moto S3) and a real server per backend."""

import os
import sys
import threading

import pytest

from tests.services import *  # noqa: F403
from tests.serving import *  # noqa: F403

# --- a leaked thread must not hang CI -------------------------------------------------------------------
# aiosqlite runs each connection on a non-daemon thread; a store some failed test never closed would keep the
# interpreter from exiting after the run (CI would wait for its time limit). At the very end, name any such
# thread and leave with pytest's own exit status.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    main = threading.main_thread()
    leaked = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    if leaked and _exit_status:
        names = [t.name for t in leaked]
        print(f"\nleaked non-daemon threads (a store or client left open): {names}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
