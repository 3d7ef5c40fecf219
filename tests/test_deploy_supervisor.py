"""The supervisor's deployment files: the systemd unit (deploy/systemd) passes ``systemd-analyze verify`` as
deploy/systemd/install.sh installs it, its sandbox rates "OK" in ``systemd-analyze security``, the installer is
idempotent and keeps keys, the scripts pass shellcheck (when installed); the Swarm stack (deploy/swarm/stack.yml)
runs one replica that restarts, with the secrets and configs where its settings template expects them; both
settings templates are valid settings; and the image's liveness probe (``cumulus.healthcheck``) tells a live HTTP
port from a dead one.

``systemd-analyze`` comes from Debian's ``systemd`` package (CI: ``apt-get install -y --no-install-recommends
systemd``). Without it these tests skip on a developer's machine, and fail where ``$CI`` is set. The cluster test
tests/cluster/test_cluster_deployed.py runs the stack for real.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from cumulus.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
SWARM = ROOT / "deploy" / "swarm"
UNIT = "cumulus-supervisor.service"
CREDENTIALS = "/run/credentials/cumulus-supervisor.service/"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed, and CI must run it: "
                        "apt-get install -y --no-install-recommends systemd")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install -y --no-install-recommends systemd)")
    return found


def cumulus_executable() -> str:
    exe = Path(sys.executable).with_name("cumulus")
    assert exe.exists(), f"no cumulus next to {sys.executable}"
    return str(exe)


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SYSTEMD / "install.sh"), "--root", str(root), "--cumulus",
                           cumulus_executable(), *extra], capture_output=True, text=True, timeout=60)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    result = install(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path


# ---- systemd ------------------------------------------------------------------------------------------------------

def test_the_installed_unit_passes_systemd_analyze_verify(installed: Path):
    result = subprocess.run([systemd_analyze(), "verify", str(installed / "etc/systemd/system" / UNIT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


def test_verify_catches_a_broken_unit(installed: Path, tmp_path: Path):
    """The check can fail: an unknown key or a missing executable is reported."""
    text = (installed / "etc/systemd/system" / UNIT).read_text()
    broken = tmp_path / UNIT
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystm=strict")
                      .replace(cumulus_executable(), "/nonexistent/cumulus"))
    result = subprocess.run([systemd_analyze(), "verify", str(broken)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "ProtectSystm" in output and "/nonexistent/cumulus" in output, output


def test_the_sandbox_rates_ok(installed: Path):
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20",
                             str(installed / "etc/systemd/system" / UNIT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert level and float(level[1]) <= 2.0 and level[2] == "OK", result.stdout[-2000:]


def test_the_unit_runs_the_installed_cumulus_unprivileged_with_its_secrets_as_credentials(installed: Path):
    unit = (installed / "etc/systemd/system" / UNIT).read_text()
    assert f"ExecStart={cumulus_executable()} supervisor --config /etc/cumulus/supervisor.yaml\n" in unit
    assert "User=cumulus-supervisor\n" in unit and "SupplementaryGroups=docker\n" in unit
    assert "Restart=on-failure\n" in unit and "StateDirectory=cumulus-supervisor\n" in unit
    credentials = dict(line.split("=", 1)[1].split(":", 1) for line in unit.splitlines()
                       if line.startswith("LoadCredential="))
    settings = load_settings(installed / "etc/cumulus/supervisor.yaml", environ={})
    named = {settings.security.tls_key, settings.security.admin_token_file, settings.security.secret_key_file,
             settings.cluster.ssh_key}
    assert named == {CREDENTIALS + name for name in credentials}, (named, credentials)
    assert settings.journal.path.startswith("/var/lib/cumulus-supervisor/")
    assert (installed / settings.cluster.worker_files.lstrip("/") / "setup-worker.sh").exists()


def test_the_installer_makes_private_keys_once_and_keeps_settings(installed: Path):
    secrets = installed / "etc/cumulus/secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    before = {p.name: p.read_text() for p in secrets.iterdir()}
    assert set(before) == {"journal_key", "admin_token"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in secrets.iterdir())
    assert re.fullmatch(r"cumulus_[A-Za-z0-9_-]{43}\n", before["admin_token"])
    from cryptography.fernet import Fernet

    Fernet(before["journal_key"].strip().encode())  # a usable key
    settings = installed / "etc/cumulus/supervisor.yaml"
    assert settings.stat().st_mode & 0o777 == 0o640
    settings.write_text(settings.read_text().replace('supervisor_id: "main"', 'supervisor_id: "edited"'))
    again = install(installed)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p.name: p.read_text() for p in secrets.iterdir()} == before
    assert 'supervisor_id: "edited"' in settings.read_text()
    assert "still missing" in again.stdout and "secrets/ssh_key" in again.stdout
    assert (installed / "opt/cumulus-supervisor/worker_image/setup-worker.sh").exists()


@pytest.mark.parametrize("script", ["deploy/systemd/install.sh", "supervisor_image/build.sh"])
def test_the_scripts_are_valid_bash_and_shellcheck_clean(script: str):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(ROOT / script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# ---- Swarm --------------------------------------------------------------------------------------------------------

def stack() -> dict:
    return yaml.safe_load((SWARM / "stack.yml").read_text())


def test_the_stack_runs_one_replica_that_always_restarts_on_the_manager():
    service = stack()["services"]["supervisor"]
    deploy = service["deploy"]
    assert deploy["mode"] == "replicated" and deploy["replicas"] == 1
    assert deploy["restart_policy"]["condition"] == "any"
    assert deploy["update_config"]["order"] == "stop-first"
    assert "node.role == manager" in deploy["placement"]["constraints"]
    assert service["stop_signal"] == "SIGKILL"  # SIGTERM would tear the running jobs down
    assert service["networks"] == ["hostnet"] and stack()["networks"]["hostnet"] == {"external": True,
                                                                                       "name": "host"}
    mounts = {m["target"]: m for m in service["volumes"]}
    assert mounts["/var/lib/cumulus"]["type"] == "volume"
    assert mounts["/var/run/docker.sock"]["type"] == "bind"
    assert service["read_only"] is True


def test_the_stack_puts_secrets_and_configs_where_the_settings_template_reads_them():
    spec = stack()
    service = spec["services"]["supervisor"]
    secrets = {"/run/secrets/" + s["target"] for s in service["secrets"]}
    configs = {c["target"] for c in service["configs"]}
    assert all(s["mode"] == 0o400 for s in service["secrets"])
    settings = load_settings(SWARM / "supervisor.yaml", environ={})
    assert secrets == {settings.security.tls_key, settings.security.admin_token_file,
                       settings.security.secret_key_file, settings.cluster.ssh_key}
    assert configs == {"/etc/cumulus/supervisor.yaml", settings.security.tls_cert, settings.security.tls_ca,
                       settings.cluster.known_hosts}
    assert settings.cluster.worker_files == "/opt/cumulus/worker_image"  # where the Dockerfile copies them
    assert settings.journal.path.startswith("/var/lib/cumulus/")
    assert settings.cluster.docker_host == "unix:///var/run/docker.sock"
    names = [o["name"] for kind in ("configs", "secrets") for o in spec[kind].values()]
    assert all(name.endswith("${CUMULUS_REVISION:-1}") for name in names), names


def test_every_variable_of_the_stack_is_documented():
    text = (SWARM / "stack.yml").read_text()
    header = text.split("\nversion:", 1)[0]
    used = set(re.findall(r"\$\{(CUMULUS_[A-Z_]+)", text))
    assert used and all(re.search(rf"^#   {name}\b", header, re.M) for name in used), used


# ---- the image's liveness probe -----------------------------------------------------------------------------------

def probe(tmp_path: Path, http_listen: str, listen: str = "127.0.0.1:1") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "supervisor.yaml"
    config.write_text(f"grpc:\n  listen: \"{listen}\"\nserver:\n  http_listen: \"{http_listen}\"\n"
                      "security:\n  insecure: true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
    return subprocess.run([sys.executable, "-m", "cumulus.healthcheck", str(config)], capture_output=True, text=True,
                          timeout=30, env=env)


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok\n" if ok else b"no\n")

    def log_message(self, *args: object) -> None:
        pass


def test_the_probe_tells_a_live_http_port_from_a_dead_one(tmp_path: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        alive = probe(tmp_path, f"0.0.0.0:{port}")  # a wildcard address is probed on loopback
        assert alive.returncode == 0 and "/healthz: 200 ok" in alive.stdout, alive.stdout + alive.stderr
    finally:
        server.shutdown()
        server.server_close()
    dead = probe(tmp_path, f"127.0.0.1:{port}")
    assert dead.returncode == 1 and "refused" in dead.stderr.lower(), dead.stdout + dead.stderr
    no_http = probe(tmp_path, "", listen=f"127.0.0.1:{port}")  # no HTTP port: the gRPC port is tried
    assert no_http.returncode == 1 and "gRPC port" in no_http.stderr, no_http.stdout + no_http.stderr
    bad = tmp_path / "missing.yaml"
    missing = subprocess.run([sys.executable, "-m", "cumulus.healthcheck", str(bad)], capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr


def test_the_local_supervisor_image_is_built_from_every_file_of_the_package():
    """The wheel must carry the dashboard's templates and static files, not only Python sources: without them the
    deployed supervisor's container exits at start."""
    from cumulus.local.supervisor_image import _source_files

    names = {p.relative_to(Path(__file__).resolve().parents[1]).as_posix() for p in _source_files()}
    assert {"cumulus/dashboard/templates/base.html", "cumulus/dashboard/static/htmx.min.js",
            "cumulus/dashboard/static/style.css", "cumulus/py.typed", "pyproject.toml"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
