"""Fixtures shared by the whole suite: real services (PostgreSQL, moto S3) and a real server per backend."""

from tests.services import *  # noqa: F403
from tests.serving import *  # noqa: F403


# --- a leaked thread must not hang CI -------------------------------------------------------------------
# aiosqlite runs each connection on a non-daemon thread; a store some failed test never closed would keep the
# interpreter from exiting after the run (CI would wait for its time limit). At the very end, name any such
# thread and leave with pytest's own exit status.
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
import threading as _threading  # noqa: E402

_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001, ANN201
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config):  # noqa: ANN001, ANN201
    leaked = [t for t in _threading.enumerate() if t is not _threading.main_thread() and not t.daemon and t.is_alive()]
    if leaked and _exit_status:
        print(f"\nleaked non-daemon threads (a store or client left open): {[t.name for t in leaked]}", file=_sys.stderr)
        _sys.stdout.flush()
        _sys.stderr.flush()
        _os._exit(_exit_status[0])
