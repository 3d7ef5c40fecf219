"""Shared pytest hooks: the chaos modules' fault and leak counts go into the run's summary (CI logs keep them)."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    lines = []
    for module in list(sys.modules.values()):
        summary = getattr(module, "CHAOS_SUMMARY", None)
        if callable(summary):
            line = summary()
            if line:
                lines.append(line)
    if lines:
        terminalreporter.section("chaos")
        for line in sorted(lines):
            terminalreporter.write_line(line)
