"""checkov's Kubernetes policies over the dev and prod renders: no finding is left open.

A finding is either fixed in k8s/ or skipped on the resource itself with a reason, as a checkov annotation
(`checkov.io/skipN: CKV_K8S_xx=reason`), so the reason sits next to the manifest it excuses. Prod may skip
only the checks listed below; a new skip there is a reviewed change to this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import OVERLAYS

# Prod skips and why (the same reasons are the annotations' text):
PROD_ALLOWED_SKIPS = {
    # Settings are TT_* env vars (pydantic-settings); file-mounted secrets need `secrets_dir` support in
    # tt_server/config.py. The values still come from secretKeyRef, never from the manifests.
    "CKV_K8S_35",
    # The worker serves no port and writes no heartbeat: nothing for a liveness probe to ask, and no
    # Service routes to it, so readiness would change nothing.
    "CKV_K8S_8",
    "CKV_K8S_9",
}


def _in(overlay: str, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in checks if f"/{overlay}/" in c["file_path"]]


def _describe(check: dict[str, Any]) -> str:
    return f"{check['resource']}: {check['check_id']} {check['check_name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing(checkov_report: dict[str, Any], overlay: str) -> None:
    results = checkov_report["results"]
    assert not results["parsing_errors"], results["parsing_errors"]
    assert _in(overlay, results["passed_checks"]), f"checkov checked nothing in {overlay}"
    failed = _in(overlay, results["failed_checks"])
    assert not failed, "checkov findings:\n" + "\n".join(_describe(c) for c in failed)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_skip_has_a_reason(checkov_report: dict[str, Any], overlay: str) -> None:
    for check in _in(overlay, checkov_report["results"]["skipped_checks"]):
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.strip()) >= 10, f"{_describe(check)} skipped without a reason"


def test_prod_skips_only_the_reviewed_checks(checkov_report: dict[str, Any]) -> None:
    skipped = {c["check_id"] for c in _in("prod", checkov_report["results"]["skipped_checks"])}
    assert skipped <= PROD_ALLOWED_SKIPS, f"new skips in prod: {skipped - PROD_ALLOWED_SKIPS}"
