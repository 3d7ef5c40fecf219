"""`pip install cumulus` is the client: the SDK and the CLI job commands work without the server extra (Trio,
trio-asyncio, docker, asyncssh, PyYAML).

* ``test_client_works_without_server_packages``: fast; imports and runs the client in a subprocess that cannot
  import the server packages.
* ``test_plain_install_is_client_only`` (slow): ``pip install <repo>`` into a fresh venv, then the checks that
  matter to a user.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("docker", "asyncssh", "trio_asyncio")  # what `cumulus[server]` adds, and plain must not
CLIENT_COMMANDS = ("submit", "status", "cancel", "logs", "jobs", "workers", "health")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let a child python find this source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# ---- the client without the server packages ----------------------------------------------------------------------

CLIENT_ONLY_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {"trio", "trio_asyncio", "docker", "asyncssh", "requests", "cryptography"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: a server package)", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import cumulus
    from cumulus.cli import main
    from cumulus.client import packaging
    from cumulus.client.health import check_health

    for name in ("remote", "get", "wait", "CumulusClient", "JobRef", "JobFailed", "JobCancelled", "RemoteError"):
        getattr(cumulus, name)

    @cumulus.remote(gpu=0.5, duration=60)
    def f(x: int) -> str:
        return str(x)

    assert f(1) == "1" and f.options(gpu=2).remote_options["gpu"] == 2
    assert packaging.build_package(f, (1,), {})[:2] == b"PK"
    from cumulus.jobformat import validate_package  # the job format is core: no server package needed
    assert validate_package(packaging.build_package(f, (1,), {})).function.endswith("f")
    with cumulus.CumulusClient("127.0.0.1:1", log_to_driver=False) as c:
        pass
    ok, text = check_health("127.0.0.1:1", timeout=2.0)
    assert not ok, text
    for argv in (["--help"], *([cmd, "--help"] for cmd in COMMANDS)):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code in (0, None), (argv, exit.code)
        else:
            raise AssertionError(f"{argv}: no exit")
    print("CLIENT-OK")
""")


def test_client_works_without_server_packages(tmp_path):
    script = f"COMMANDS = {CLIENT_COMMANDS!r}\n" + CLIENT_ONLY_SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "CLIENT-OK" in proc.stdout, proc.stderr[-4000:]


# ---- a real plain install ----------------------------------------------------------------------------------------

INSTALLED_SCRIPT = textwrap.dedent("""
    import importlib.resources, importlib.util, sys
    import cumulus

    assert "site-packages" in cumulus.__file__, cumulus.__file__  # the installed copy, not the source tree
    cumulus.remote, cumulus.get, cumulus.CumulusClient, cumulus.JobRef

    @cumulus.remote(gpu=0.25)
    def f(x: int) -> int:
        return x

    assert f(3) == 3
    present = [m for m in SERVER_ONLY if importlib.util.find_spec(m) is not None]
    assert not present, f"server packages installed by a plain install: {present}"
    files = importlib.resources.files("cumulus")
    assert files.joinpath("py.typed").is_file(), "cumulus/py.typed is not installed"
    assert files.joinpath("rpc/generated/v1/cumulus_pb2.pyi").is_file(), "the protobuf stubs are not installed"
    for page in ("dashboard/templates/base.html", "dashboard/static/htmx.min.js", "dashboard/static/style.css"):
        assert files.joinpath(page).is_file(), f"the dashboard's {page} is not installed (package-data)"
    print("INSTALLED-OK")
""")


@pytest.mark.slow
def test_plain_install_is_client_only(tmp_path):
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip("this python has no ensurepip (Debian: apt-get install python3-venv)")
    started = time.monotonic()
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    shutil.copytree(ROOT / "cumulus", src / "cumulus", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    python, cumulus_cmd = venv / "bin" / "python", venv / "bin" / "cumulus"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                          "--quiet", str(src)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"

    script = f"SERVER_ONLY = {SERVER_ONLY!r}\n" + INSTALLED_SCRIPT
    proc = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "INSTALLED-OK" in proc.stdout, proc.stderr[-4000:]
    for argv in (["--help"], ["submit", "--help"]):
        run = subprocess.run([str(cumulus_cmd), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, f"cumulus {' '.join(argv)} exited {run.returncode}:\n{run.stderr[-3000:]}"
        assert "usage: cumulus" in run.stdout
    print(f"plain install checked in {time.monotonic() - started:.1f} s")
