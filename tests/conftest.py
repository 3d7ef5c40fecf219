"""Shared pytest hooks: every run's property tests draw a new seed (printed in the header and the summary, so a
failure can be replayed with CUMULUS_HYPOTHESIS_SEED=N), and the chaos modules' fault and leak counts go into the
run's summary (CI logs keep them)."""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis derandomizes under CI by default (every run the same cases); a property test should explore anew.
# Its too_slow check measures generation time in wall seconds, which a loaded 2-core machine fails by itself.
settings.register_profile("cumulus", derandomize=False, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cumulus")
HYPOTHESIS_SEED = int(os.environ.get("CUMULUS_HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = HYPOTHESIS_SEED
    # Every client of the run (and the CLI processes it starts) trusts the run's CA and sends its admin token.
    from tests.credentials import install_client_config

    install_client_config()


def pytest_report_header(config):
    return f"hypothesis seed: {config.getoption('hypothesis_seed')} (replay: CUMULUS_HYPOTHESIS_SEED=N)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    lines = []
    for module in list(sys.modules.values()):
        summary = getattr(module, "CHAOS_SUMMARY", None)
        if callable(summary):
            line = summary()
            if line:
                lines.append(line)
    terminalreporter.write_line(f"hypothesis seed: {config.getoption('hypothesis_seed')}")
    if lines:
        terminalreporter.section("chaos")
        for line in sorted(lines):
            terminalreporter.write_line(line)
