"""Every example in README.md and docs/*.md runs as written, in order, on a fresh server.

What runs: each fenced block tagged ``sh``, ``bash`` or ``python`` (other tags, such as ``json`` or none, are
shown, never run). Each block is one test case, named by document and fence lines (``README.md:80-95``), and a
failure shows the block's output.

How a document runs: its blocks run in document order against a live server of its own, started with embedded
defaults (a fresh data folder: SQLite, blob folder, in-process jobs) on a free loopback port, in a scratch
directory of its own that starts with the files the examples name (``examples.build_example_files``:
``mlp.keras`` and ``model.keras`` (the MLP, input ``features`` (4,) -> ``score`` (1,)), ``exported_saved_model_dir/``,
``model.pb`` + ``labels.txt`` (the MLP as a TFaaS frozen graph, ``dense_1_input`` -> ``output_node0``), ``cnn.keras``
+ ``classes.txt`` + ``cat.png`` / ``dog.jpg`` (a 3-class image classifier), ``x.npy``, ``rows.csv`` / ``big.csv``
(``id,a,b,c,d``) and ``labelled.csv`` (``a,b,c,d,y``)). An example that needs another file adds it there.

- The examples are written for the default address ``127.0.0.1:50051`` (or ``localhost:50051``): that text is
  replaced by the test server's address before a block runs, and ``TT_ADDRESS`` (the ``tt`` command's default)
  is set to it.
- Shell blocks run one by one under ``bash`` with ``set -euo pipefail``, with the development venv's ``bin``
  (``python``, ``tt``, ``grpcurl``) first on ``PATH``: any failing command fails the block. Shell variables do
  not carry over from one block to the next.
- Python blocks of one document share one namespace, like one script pasted block by block: a later block may
  use what an earlier one defined (imports included), and a block must define (or import) everything else it
  uses. Top-level ``await`` is not available (wrap it in ``asyncio.run(...)``, as a script must). They run in
  the test process (on a thread of their own, with the scratch directory as working directory), where
  TensorFlow is imported already: a fresh interpreter would spend ~9 s of CPU importing it per document. The
  suite's warning filters apply, so a warning the example triggers fails it.
- A block that cannot run here (it runs ``make test`` itself, needs a Kubernetes cluster or Docker, installs
  packages, runs a long benchmark) gets an HTML comment, invisible on GitHub, on the line right before its fence:
  ``<!-- docs-test: skip (needs a Kubernetes cluster) -->``. The reason is required; the test case is skipped
  with it, and the run's summary lists every skipped example with its reason. Keep skips few and honest.
- A block that needs setup the reader does not see (e.g. a throwaway TLS certificate pair) may take it from a
  comment right before its fence: ``<!-- docs-test: setup CODE -->`` (CODE may span lines up to ``-->``, in the
  block's language); it runs just before the block, in the same shell or Python session. Prefer examples that
  need no setup.
- A document whose examples need the server configured otherwise says so once, anywhere in it:
  ``<!-- docs-test: server TT_METRICS_ADDRESS=127.0.0.1:9090 TT_ACCESS_LOG=all -->`` (settings as in the
  environment, names checked against ``tt_server.config.Settings``, no spaces in values). A loopback address
  among them is given a free port instead, and the documented address in the examples is replaced by it, so
  ``curl http://127.0.0.1:9090/metrics`` in an example reaches that server.
- A marker that is malformed, lacks a reason or precedes no runnable block fails a test case of its own.

If a test selection (``-k``) picks a later block, the document's earlier blocks run first, untested, so that
the later one finds what they made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.examples import (
    OUTPUT_TAIL,
    Block,
    DocumentSession,
    all_blocks,
    build_example_files,
    extract,
    server_variables,
)

BLOCKS = all_blocks()


class Sessions:
    """The session of the document being run; the previous document's server stops when the next one starts."""

    def __init__(self, root: Path, files: Path) -> None:
        self._root = root
        self.files = files
        self._current: DocumentSession | None = None
        self._started = 0

    def for_block(self, block: Block) -> DocumentSession:
        if self._current is None or self._current.document != block.document:
            self.close()
            self._started += 1
            blocks = [b for b in BLOCKS if b.document == block.document]
            workdir = self._root / f"{self._started}-{block.document.stem}"
            self._current = DocumentSession(block.document, blocks, workdir, self.files)
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sessions]:
    root = tmp_path_factory.mktemp("docs")
    running = Sessions(root, build_example_files(root / "files"))
    yield running
    running.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_example(block: Block, sessions: Sessions) -> None:
    if block.problem is not None:
        pytest.fail(f"{block.name}: {block.problem}", pytrace=False)
    if block.skip is not None:
        pytest.skip(f"docs-test: skip ({block.skip})")
    outcome = sessions.for_block(block).run(block)
    if not outcome.ok:
        output = outcome.output if len(outcome.output) <= OUTPUT_TAIL else "..." + outcome.output[-OUTPUT_TAIL:]
        pytest.fail(f"{block.name} failed:\n{block.setup}{block.code}\n--- output ---\n{output}", pytrace=False)


def test_examples_exist() -> None:
    """The extraction finds the documents' examples (a broken fence pattern would otherwise pass vacuously)."""
    names = {block.name.split(":")[0] for block in BLOCKS if block.skip is None and block.problem is None}
    assert {"README.md", "docs/clients.md", "docs/compat.md", "docs/tfaas.md"} <= names
    assert len([b for b in BLOCKS if b.skip is None]) >= 20


MARKERS = """\
# Title

<!-- docs-test: skip (needs a Kubernetes cluster) -->
```sh
kubectl apply -k k8s/overlays/dev
```

<!-- docs-test: skip -->
```sh
echo no reason
```

<!-- docs-test: setup
printf 'reader t1\\n' > tokens
-->
```bash
cat tokens
```

   ```python
   print("indented, in a list")
   ```

```json
{"shown": "never run"}
```

<!-- docs-test: skip (before a json block) -->
```json
{}
```

<!-- docs-test: skipp (typo) -->
```sh
true
```

<!-- docs-test: server TT_METRICS_ADDRESS=127.0.0.1:9090 TT_NO_SUCH_SETTING=1 -->

<!-- docs-test: skip (a reason
   on two lines) -->
```sh
false
```
"""


def test_markers(tmp_path: Path) -> None:
    document = tmp_path / "markers.md"
    document.write_text(MARKERS)
    blocks = extract(document)
    assert [(b.start, b.lang) for b in blocks] == [
        (4, "sh"),
        (9, "sh"),
        (16, "sh"),
        (20, "python"),
        (28, "sh"),
        (34, "sh"),
        (38, "sh"),
        (42, "sh"),
    ]
    k8s, no_reason, setup, indented, before_json, typo, server, two_lines = blocks
    assert k8s.skip == "needs a Kubernetes cluster" and k8s.problem is None
    assert no_reason.skip is None and "needs a reason" in (no_reason.problem or "")
    assert setup.setup == "printf 'reader t1\\n' > tokens\n" and setup.code == "cat tokens\n" and setup.problem is None
    assert indented.code == 'print("indented, in a list")\n'
    assert "never run" in (before_json.problem or "")
    assert typo.problem is not None and typo.skip is None
    assert "TT_NO_SUCH_SETTING=1" in (server.problem or "")
    assert server_variables(document) == {"TT_METRICS_ADDRESS": "127.0.0.1:9090"}
    assert two_lines.skip == "a reason on two lines" and two_lines.code == "false\n"


FAILING = """\
<!-- docs-test: server TT_METRICS_ADDRESS=127.0.0.1:9090 -->
```sh
grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check
python -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9090/metrics").read().decode())' |
  grep '^tt_rpcs_total{'
```

```sh
true | false | true
echo not reached
```

```python
answer = 41
```

```python
assert answer == 42, "off by one"
```
"""


def test_failures_are_caught(tmp_path: Path, sessions: Sessions) -> None:
    """A failing command anywhere in a pipe fails its shell block; a Python failure names the Markdown line;
    the default address reaches the document's server, and a loopback address the document gives its server
    is on a free port, which the example reaches at the documented address."""
    document = tmp_path / "failing.md"
    document.write_text(FAILING)
    blocks = extract(document)
    session = DocumentSession(document, blocks, tmp_path / "work", sessions.files)
    try:
        health, pipe, define, check = (session.run(block) for block in blocks)
    finally:
        session.close()
    assert health.ok and '"status": "SERVING"' in health.output
    assert 'tt_rpcs_total{code="OK",method="/tensortrigger.v1.InferenceService/Predict"}' in health.output
    assert not pipe.ok and "exit status 1" in pipe.output and "not reached" not in pipe.output
    assert define.ok
    assert not check.ok and f'File "{document}", line 18' in check.output and "off by one" in check.output
