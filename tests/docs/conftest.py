"""The docs-examples run ends with the list of examples it did not run, and why (see test_examples.py)."""

from __future__ import annotations

from _pytest.terminal import TerminalReporter

EXAMPLES = "tests/docs/test_examples.py::test_example["


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if r.nodeid.startswith(EXAMPLES)]
    if not skipped:
        return
    terminalreporter.section("docs examples not run")
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"{report.nodeid[len(EXAMPLES) : -1]}: {reason.removeprefix('Skipped: ')}")
