"""Credentials in requirement URLs never reach a log: cumulus.redaction, the runner's copy of it (the worker image
imports nothing of cumulus), the job history's scrubbing, and the runner's own pip output when it installs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cumulus.client import packaging as pk
from cumulus.history import scrub
from cumulus.redaction import redact_credentials

from test_jobformat_runner_copy import runner

RUNNER = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "runner.py"

CASES = [
    ("pkg @ https://user:tok3n@host/pkg.whl", "pkg @ https://***@host/pkg.whl"),
    ("git+https://ghp_abc123@github.com/org/repo@v1.0", "git+https://***@github.com/org/repo@v1.0"),
    ("https://u:p@ss@host/x", "https://***@host/x"),
    ("--index-url https://me:pw@pypi.example.com/simple", "--index-url https://***@pypi.example.com/simple"),
    ("https://host/simple/?access_token=abc&x=1", "https://host/simple/?access_token=***&x=1"),
    ("http://host:8080/x.whl?X-Amz-Signature=abc#frag", "http://host:8080/x.whl?X-Amz-Signature=***#frag"),
    ("numpy>=1.26", "numpy>=1.26"),
    ("git+https://github.com/org/repo@v1.0", "git+https://github.com/org/repo@v1.0"),
    ("pkg @ https://host/pkg.whl; python_version>='3.8'", "pkg @ https://host/pkg.whl; python_version>='3.8'"),
    ("a=b", "a=b"),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:30] for c in CASES])
def test_url_credentials_are_redacted(text, expected):
    assert redact_credentials(text) == expected
    assert runner.redact_credentials(text) == expected


@given(st.lists(st.sampled_from(list("ab:/@?&=#;. \n") + ["https://", "token", "key", "%40"]), max_size=30)
       .map("".join))
def test_the_runner_copy_redacts_the_same(text):
    assert runner.redact_credentials(text) == redact_credentials(text)


def test_history_texts_never_keep_url_credentials():
    event_text = "requirements: pip install of pkg @ https://alice:s3cret@host/p.whl failed"
    scrubbed = scrub({"text": event_text, "data": [event_text]}, ())
    assert "s3cret" not in str(scrubbed) and "alice" not in str(scrubbed)
    assert "https://***@host/p.whl" in scrubbed["text"]


def test_the_runner_log_has_no_credentials_of_requirement_urls(tmp_path):
    """The runner's fallback install (no /cumulus/deps mounted) logs the list and pip's lines: never the token."""
    package = pk.build_package(len, ([],), requirements=["pkg @ https://alice:s3cret@127.0.0.1:9/pkg-1.0.whl"])
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "package.zip").write_bytes(package)
    house = tmp_path / "house"
    house.mkdir()
    env = {"CUMULUS_CODE_DIR": str(tmp_path / "code"), "CUMULUS_OUTPUT_DIR": str(tmp_path / "out"),
           "CUMULUS_WORK_DIR": str(tmp_path), "CUMULUS_WHEELHOUSE": str(house), "CUMULUS_PIP_TIMEOUT": "60",
           "CUMULUS_DEPS_DIR": str(tmp_path / "no-deps-mounted"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(RUNNER)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "installing 1 requirement(s)" in proc.stderr
    assert "s3cret" not in proc.stderr and "alice" not in proc.stderr, proc.stderr
    assert "https://***@127.0.0.1:9/pkg-1.0.whl" in proc.stderr
    assert zipfile.is_zipfile(tmp_path / "code" / "package.zip")
