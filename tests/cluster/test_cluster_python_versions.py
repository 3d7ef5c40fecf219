"""Python versions on the real local cluster (issue 17): the cluster serves Python 3.11 (Debian bookworm's image) and
3.13 (trixie's). A real Python 3.13 client - Debian trixie's python3 in a chroot of the local cluster's own trixie
base, with the client's wheels for 3.13 - runs a non-trivial function (loops, comprehensions, f-strings,
try/except, a class from a local module) through the local supervisor and gets its value computed on 3.13; this
machine's 3.11 client gets its job run on 3.11; a client of a version the cluster has no image for is refused at
submit with FAILED_PRECONDITION naming the versions it has.

No Python 3.12 interpreter is on this machine (neither Debian suite has one): the refusal is checked with this
machine's client whose package says 3.12, which is all the supervisor sees of a client's version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

import cumulus
from cumulus.client import packaging
from cumulus.errors import Unsatisfiable
from cumulus.local import image as local_image

from supervisor_process import remote_supervisor  # noqa: F401  (the module-scoped fixture)

REPO = Path(cumulus.__file__).resolve().parent.parent
JOB_TIMEOUT = 180

HELPER = '''\
class Tally:
    """A class from a local module: pickled by value, rebuilt on the worker."""

    def __init__(self, start):
        self.total = start

    def add_all(self, values):
        for value in values:
            try:
                self.total += int(value)
            except ValueError:
                self.total -= 1
        return self
'''

SCRIPT = '''\
import sys

import cumulus
from tally import Tally


@cumulus.remote(gpu=0.1, duration=120)
def crunch(words):
    squares = [n * n for n in range(10) if n % 2]
    counts = {w: len(w) for w in words}
    tally = Tally(sum(squares)).add_all(["1", "2", "x", *map(str, counts.values())])
    return f"{sys.version_info.major}.{sys.version_info.minor}:{tally.total}:{sorted(counts.items())}"


print(crunch.remote(["ab", "cde"]).result(timeout=JOB_TIMEOUT))
'''.replace("JOB_TIMEOUT", str(JOB_TIMEOUT))


def expected(minor: str) -> str:
    squares = sum(n * n for n in range(10) if n % 2)
    return f"{minor}:{squares + 1 + 2 - 1 + 2 + 3}:[('ab', 2), ('cde', 3)]"


def client_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.fixture(scope="module")
def py313_root(cluster, tmp_path_factory) -> Path:
    """Debian trixie (Python 3.13) as a chroot: the local cluster's base tarball, the client's dependencies as
    3.13 wheels under /opt/client, this checkout's ``cumulus`` package, and the local client config and CA."""
    root = tmp_path_factory.mktemp("py313") / "root"
    root.mkdir()
    with tarfile.open(local_image.base_tarball("trixie")) as tar:
        tar.extractall(root, filter="fully_trusted")
    site = root / "opt/client"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(site), "--python-version", "3.13", "--implementation", "cp",
                    "--only-binary", ":all:", *client_requirements()], check=True, timeout=600)
    shutil.copytree(REPO / "cumulus", site / "cumulus", ignore=shutil.ignore_patterns("__pycache__"))
    config = Path(os.environ.get("CUMULUS_CONFIG", Path.home() / ".config/cumulus/config.yaml"))
    (root / "root/.config/cumulus").mkdir(parents=True, exist_ok=True)
    shutil.copy(config, root / "root/.config/cumulus/config.yaml")
    ca = Path(yaml.safe_load(config.read_text()).get("ca") or "/var/lib/cumulus-local/tls/ca.pem")
    (root / ca.parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, root / ca.relative_to("/"))
    (root / "work").mkdir()
    (root / "work/tally.py").write_text(HELPER)
    (root / "work/job.py").write_text(SCRIPT)
    return root


def test_a_python_3_13_client_runs_on_the_python_3_13_image(py313_root, remote_supervisor):
    version = subprocess.run(["chroot", str(py313_root), "python3", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("Python 3.13"), version
    run = subprocess.run(["chroot", str(py313_root), "/usr/bin/env", "-i", "HOME=/root", "PATH=/usr/bin:/bin",
                          "PYTHONPATH=/opt/client", "CUMULUS_QUIET_LOGS=1", f"CUMULUS_ADDRESS={remote_supervisor.address}",
                          "python3", "/work/job.py"],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT + 60, cwd="/")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == expected("3.13")


def test_a_python_3_11_client_runs_on_the_python_3_11_image(remote_supervisor, tmp_path):
    (tmp_path / "tally.py").write_text(HELPER)
    (tmp_path / "job.py").write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(tmp_path / "job.py")], capture_output=True, text=True,
                         timeout=JOB_TIMEOUT + 60, env={**os.environ, "CUMULUS_QUIET_LOGS": "1",
                              "CUMULUS_ADDRESS": remote_supervisor.address})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == expected(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_a_client_of_a_version_without_an_image_is_refused_at_submit(remote_supervisor, monkeypatch):
    import cumulus as sdk

    monkeypatch.setattr(packaging, "python_version", lambda: "3.12.7")

    @sdk.remote(gpu=0.1, address=remote_supervisor.address)
    def add(a, b):
        return a + b

    with pytest.raises(Unsatisfiable) as refused:
        add.remote(1, 2)
    message = str(refused.value)
    assert "Python 3.12.7" in message and "3.11, 3.13" in message, message
