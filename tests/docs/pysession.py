"""One document's Python session: runs the blocks it is sent, in order, in one namespace.

Started by ``tests/docs/examples.py`` as ``python pysession.py`` in the document's scratch directory (so it
imports nothing from ``tests``). Each request is a JSON line on stdin: ``{"code", "file", "line", "log"}``;
the block is compiled as if it stood at ``line`` of ``file`` (tracebacks name the Markdown's own lines), its
stdout and stderr (file descriptors 1 and 2, so subprocesses and C libraries too) go to ``log``, and the
reply is one JSON line ``{"error": traceback or null}`` on the original stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # a block that reads stdin must not eat the next request
    namespace: dict[str, object] = {"__name__": "__main__"}
    for line in requests:
        request = json.loads(line)
        with open(request["log"], "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            error = None
            try:
                source = "\n" * (request["line"] - 1) + request["code"]
                exec(compile(source, request["file"], "exec"), namespace)
            except BaseException:  # SystemExit and KeyboardInterrupt are the block's failure too
                error = traceback.format_exc()
                sys.stderr.write(error)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        replies.write(json.dumps({"error": error}) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
