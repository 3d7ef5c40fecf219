"""The worker image's copy of the in-job API (worker_image/image/jobapi/cumulus) agrees with cumulus.checkpoint.

Inside a job container there is no cumulus package: the runner puts /opt/cumulus/jobapi on sys.path, where a tiny
``cumulus`` package holds a byte-identical copy of cumulus/checkpoint.py. This file keeps the copy equal and checks
that the package there is standalone (relative imports, the stdlib) and offers what a job calls.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import cumulus.checkpoint

JOBAPI = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "jobapi"


def test_the_copy_is_byte_identical():
    copy = JOBAPI / "cumulus" / "checkpoint.py"
    assert copy.read_bytes() == Path(cumulus.checkpoint.__file__).read_bytes(), (
        "worker_image/image/jobapi/cumulus/checkpoint.py differs from cumulus/checkpoint.py: copy it again")


def test_the_job_api_package_imports_nothing_absolutely():
    for path in (JOBAPI / "cumulus").rglob("*.py"):  # client/ included
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level or not (node.module or "").startswith("cumulus"), f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "cumulus" for a in node.names), f"{path.name}:{node.lineno}"


def test_a_job_finds_the_api_there_and_no_sdk():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cumulus; "
            "assert cumulus.__file__.startswith(sys.argv[1]), cumulus.__file__; "
            "assert cumulus.should_pause is cumulus.checkpoint.should_pause; "
            "assert cumulus.should_pause() is False and cumulus.checkpoint.load() is None; "
            "assert not hasattr(cumulus, 'remote')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    subprocess.run([sys.executable, "-I", "-c", code, str(JOBAPI)], check=True, env=env, timeout=60)
