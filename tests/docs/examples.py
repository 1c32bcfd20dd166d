"""Machinery of ``test_examples.py``: find the examples in the Markdown, build the files they name, and run one
document's examples against a live server of its own. The conventions are in ``test_examples.py``'s docstring."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tt_server.app import Application
from tt_server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
DEFAULT_ADDRESSES = ("127.0.0.1:50051", "localhost:50051")
BLOCK_TIMEOUT_SECONDS = 120.0
_PREFIX = "TT_DOCS_TEST_UNUSED_"  # the server reads its settings under this prefix: none from the environment
OUTPUT_TAIL = 6000  # characters of a failed block's output shown in the report

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*(?P<end>-->)?\s*$")
_SKIP = re.compile(r"^skip\s*\((?P<reason>.*\S.*)\)$", re.DOTALL)
_VARIABLE = re.compile(r"^TT_[A-Z0-9_]+=[^'\s]*$")
_LOOPBACK = re.compile(r"^(?:127\.0\.0\.1|localhost):(?P<port>\d+)$")


@dataclass(frozen=True)
class Block:
    """One fenced example: ``start``/``end`` are the 1-based lines of its opening and closing fences."""

    document: Path
    start: int
    end: int
    lang: str  # "sh" or "python"
    code: str
    skip: str | None = None  # the reason, for a block marked ``docs-test: skip (reason)``
    setup: str = ""  # hidden code from a ``docs-test: setup`` comment, run first
    problem: str | None = None  # a malformed marker: the test fails with this

    @property
    def name(self) -> str:
        return f"{shown(self.document)}:{self.start}-{self.end}"


def shown(document: Path) -> str:
    """The document's name in test ids and messages: its path in the repository."""
    return str(document.relative_to(ROOT)) if document.is_relative_to(ROOT) else document.name


def extract(document: Path) -> list[Block]:
    """The document's ``sh``/``bash``/``python`` blocks in order, with the marker comment right before each."""
    return _scan(document)[0]


def server_variables(document: Path) -> dict[str, str]:
    """The ``TT_*`` settings the document's ``docs-test: server`` comments ask its server to run with."""
    return _scan(document)[1]


def _scan(document: Path) -> tuple[list[Block], dict[str, str]]:
    lines = document.read_text().splitlines()
    blocks: list[Block] = []
    variables: dict[str, str] = {}
    marker: tuple[str, int] | None = None  # (body, line of the marker) waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _MARKER.match(line)
        if found:
            body = found["body"]
            start = i
            if not found["end"]:  # a multi-line comment: the rest up to "-->" belongs to it
                rest = []
                i += 1
                while i < len(lines) and "-->" not in lines[i]:
                    rest.append(lines[i])
                    i += 1
                if i < len(lines):
                    rest.append(lines[i].split("-->", 1)[0])
                body = "\n".join([body, *rest]).rstrip()
            i += 1
            if body.split(maxsplit=1)[0:1] == ["server"]:  # for the whole document, not for the next block
                pairs = body.split()[1:]
                bad = [pair for pair in pairs if not _is_setting(pair)]
                if bad or not pairs:
                    problem = (
                        f"line {start + 1}: `docs-test: server` takes TT_NAME=value settings, not {bad or 'nothing'}"
                    )
                    blocks.append(Block(document, start + 1, start + 1, "sh", "", problem=problem))
                variables.update(pair.split("=", 1) for pair in pairs if _is_setting(pair))
                continue
            if marker is not None:
                blocks.append(_orphan(document, marker, "another marker follows it"))
            marker = (body, start + 1)
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and marker is not None:
                blocks.append(_orphan(document, marker))
                marker = None
            i += 1
            continue
        indent, lang = fence["indent"], fence["lang"]
        close = i + 1
        while close < len(lines) and lines[close].strip() != "```":
            close += 1
        body_lines = [
            text[len(indent) :] if text.startswith(indent) else text.lstrip() for text in lines[i + 1 : close]
        ]
        if lang in LANGUAGES:
            blocks.append(_block(document, i + 1, close + 1, LANGUAGES[lang], "\n".join(body_lines) + "\n", marker))
        elif marker is not None:
            blocks.append(_orphan(document, marker, f"it precedes a ```{lang} block, which is never run"))
        marker = None
        i = close + 1
    if marker is not None:
        blocks.append(_orphan(document, marker))
    return blocks, variables


def _is_setting(pair: str) -> bool:
    """``TT_NAME=value`` naming a real setting (pydantic-settings would ignore a misspelt one)."""
    name = pair.split("=", 1)[0]
    return bool(_VARIABLE.match(pair)) and name.removeprefix("TT_").lower() in Settings.model_fields


def _block(document: Path, start: int, end: int, lang: str, code: str, marker: tuple[str, int] | None) -> Block:
    if marker is None:
        return Block(document, start, end, lang, code)
    body, line = marker
    if body.startswith("setup"):
        setup = body[len("setup") :].strip("\n ")
        if not setup:
            return Block(document, start, end, lang, code, problem=f"line {line}: `docs-test: setup` without code")
        return Block(document, start, end, lang, code, setup=setup + "\n")
    skip = _SKIP.match(body)
    if skip:
        return Block(document, start, end, lang, code, skip=" ".join(skip["reason"].split()))
    problem = f"line {line}: `<!-- docs-test: {body} -->` is not `skip (reason)` or `setup ...`"
    if body.startswith("skip"):
        problem = f"line {line}: a skip marker needs a reason: `<!-- docs-test: skip (why it cannot run) -->`"
    return Block(document, start, end, lang, code, problem=problem)


def _orphan(document: Path, marker: tuple[str, int], why: str = "no code block follows it") -> Block:
    body, line = marker
    problem = f"line {line}: the marker `docs-test: {body.splitlines()[0]}` applies to nothing: {why}"
    return Block(document, line, line, "sh", "", problem=problem)


def all_blocks() -> list[Block]:
    return [block for document in DOCUMENTS for block in extract(document)]


def for_server(text: str, addresses: dict[str, str]) -> str:
    """The example as the reader runs it, aimed at the test server's addresses instead of the documented ones."""
    for documented, actual in addresses.items():
        text = text.replace(documented, actual)
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the files the examples name ------------------------------------------------------------------------


def build_example_files(out: Path) -> Path:
    """Every file an example reads, in ``out``: the scratch directory each document starts from."""
    from PIL import Image

    from tests import models

    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f"{out.name}-build"
    work.mkdir()
    shutil.copyfile(models.mlp_keras(work), out / "mlp.keras")  # the MLP: input "features" (4,) -> "score" (1,)
    shutil.copyfile(out / "mlp.keras", out / "model.keras")
    shutil.copytree(models.mlp_export_dir(work), out / "exported_saved_model_dir")
    shutil.copyfile(models.mlp_frozen_graph(work), out / "model.pb")
    (out / "labels.txt").write_text("background\nsignal\n")  # the frozen MLP's one sigmoid column, read as binary
    shutil.copyfile(models.colour_classifier_keras(work), out / "cnn.keras")  # 16x16 RGB -> red, green, blue
    (out / "classes.txt").write_text("cat\ndog\ncar\n")
    Image.new("RGB", (40, 30), (230, 20, 10)).save(out / "cat.png")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(out / "dog.jpg", quality=95)
    rng = np.random.default_rng(12)
    x = rng.random((200, 4), dtype=np.float32)
    np.save(out / "x.npy", x)
    (out / "features.csv").write_text("a,b,c,d\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{d:.4f}\n" for a, b, c, d in x))
    rows = "".join(f"{i},{a:.4f},{b:.4f},{c:.4f},{d:.4f}\n" for i, (a, b, c, d) in enumerate(x))
    (out / "rows.csv").write_text("id,a,b,c,d\n" + rows)
    (out / "big.csv").write_text("id,a,b,c,d\n" + rows * 5)
    labels = (x.sum(axis=1) > 2).astype(int)
    labelled = "".join(f"{a:.4f},{b:.4f},{c:.4f},{d:.4f},{y}\n" for (a, b, c, d), y in zip(x, labels, strict=True))
    (out / "labelled.csv").write_text("a,b,c,d,y\n" + labelled)
    shutil.rmtree(work)
    return out


# --- a live server and a document's session -------------------------------------------------------------


class LiveServer:
    """The real server (``Application``) with embedded defaults, on a free loopback port, on a thread of its own.

    In this process rather than a ``tt-server`` process: the process has imported TensorFlow already, and a
    second import would cost each document ~9 s on two cores. The examples still reach it only over the
    network, from their own processes.
    """

    def __init__(self, data_dir: Path, variables: dict[str, str]) -> None:
        # A fresh `make run`: the defaults, whatever TT_* variables the test run has (a prefix nothing uses), but
        # a free port, a fresh data folder and no collector freeze inside pytest; plus the document's variables,
        # read from a dotenv file exactly as from the environment, a loopback address on a free port instead.
        self.addresses: dict[str, str] = {}
        lines = []
        for name, value in variables.items():
            loopback = _LOOPBACK.match(value)
            if loopback:
                port = _free_port()
                self.addresses.update(
                    {f"{host}:{loopback['port']}": f"{host}:{port}" for host in ("127.0.0.1", "localhost")}
                )
                value = f"127.0.0.1:{port}"
            lines.append(f"{_PREFIX}{name.removeprefix('TT_')}='{value}'\n")
        env_file = data_dir.parent / f"{data_dir.name}.env"
        env_file.write_text("".join(lines))
        self._settings = Settings(
            _env_prefix=_PREFIX,
            _env_file=env_file,
            grpc_address="127.0.0.1:0",
            data_dir=data_dir,
            gc_freeze=False,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="docs-server", daemon=True)
        self._app: Application | None = None

    def start(self) -> str:
        self._thread.start()

        async def start() -> Application:
            app = Application(self._settings)
            await app.start()
            return app

        self._app = asyncio.run_coroutine_threadsafe(start(), self._loop).result(60)
        self.addresses.update({default: self._app.address for default in DEFAULT_ADDRESSES})
        return self._app.address

    def stop(self) -> None:
        if self._app is not None:
            asyncio.run_coroutine_threadsafe(self._app.stop(grace=1.0), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class Outcome:
    ok: bool
    output: str


@dataclass
class DocumentSession:
    """One document's server, scratch directory and Python session; runs its blocks in document order."""

    document: Path
    blocks: list[Block]
    workdir: Path
    files: Path
    server: LiveServer | None = None
    address: str = ""
    namespace: dict[str, object] = field(default_factory=lambda: {"__name__": "__main__"})
    outcomes: dict[Block, Outcome] = field(default_factory=dict)

    def run(self, block: Block) -> Outcome:
        """Run ``block``, first running any earlier block of the document that has not run (e.g. under -k)."""
        for earlier in self.blocks:
            if earlier == block:
                break
            if earlier not in self.outcomes and earlier.skip is None and earlier.problem is None:
                self.outcomes[earlier] = self._run(earlier)
        failed = [
            b.name for b in self.blocks[: self.blocks.index(block)] if b in self.outcomes and not self.outcomes[b].ok
        ]
        outcome = self._run(block)
        if not outcome.ok and failed:
            outcome.output += f"\n(earlier blocks of this document failed too: {', '.join(failed)})"
        self.outcomes[block] = outcome
        return outcome

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _ensure_started(self) -> None:
        if self.server is None:
            shutil.copytree(self.files, self.workdir)
            self.server = LiveServer(
                self.workdir.parent / f"{self.workdir.name}-server", server_variables(self.document)
            )
            self.address = self.server.start()

    @property
    def addresses(self) -> dict[str, str]:
        return self.server.addresses if self.server is not None else {}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["TT_ADDRESS"] = self.address  # the `tt` command's default address is the test server's
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run(self, block: Block) -> Outcome:
        self._ensure_started()
        if block.lang == "sh":
            return self._run_shell(block)
        return self._run_python(block)

    def _run_shell(self, block: Block) -> Outcome:
        # Padding keeps bash's "line N" equal to the Markdown's line of the failing command.
        padding = "\n" * max(0, block.start - 1 - block.setup.count("\n"))
        script = "set -euo pipefail\n" + block.setup + padding + block.code
        try:
            done = subprocess.run(
                ["bash", "-c", for_server(script, self.addresses), shown(block.document)],
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as e:
            return Outcome(False, f"timed out after {BLOCK_TIMEOUT_SECONDS:.0f} s\n{_text(e.stdout)}{_text(e.stderr)}")
        output = done.stdout + done.stderr
        return Outcome(
            done.returncode == 0, output if done.returncode == 0 else f"exit status {done.returncode}\n{output}"
        )

    def _run_python(self, block: Block) -> Outcome:
        output = io.StringIO()
        error: str | None = None
        for code, line in ((block.setup, block.start), (block.code, block.start + 1)):
            if code:
                error = self._exec(for_server(code, self.addresses), line, output)
                if error is not None:
                    output.write(error)
                    break
        return Outcome(error is None, output.getvalue())

    def _exec(self, code: str, line: int, output: io.StringIO) -> str | None:
        """Run one block in the document's namespace, on a thread of its own (the block may ``asyncio.run``),
        with the scratch directory as the working directory and its output captured."""
        errors: list[str] = []

        def run() -> None:
            source = "\n" * (line - 1) + code  # tracebacks name the Markdown's own line numbers
            with contextlib.chdir(self.workdir), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                try:
                    exec(compile(source, str(self.document), "exec"), self.namespace)
                except BaseException:  # SystemExit too: the block failed
                    errors.append(traceback.format_exc())

        thread = threading.Thread(target=run, name=f"docs-{self.document.stem}", daemon=True)
        thread.start()
        thread.join(BLOCK_TIMEOUT_SECONDS)
        if thread.is_alive():
            return f"timed out after {BLOCK_TIMEOUT_SECONDS:.0f} s"
        return errors[0] if errors else None


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
