"""The host side of the one-command join, without a cluster: ``worker_image/join.sh`` is valid bash (and clean for
shellcheck when it is installed) and refuses bad input with ``join: <message>`` and exit 1 before it touches
anything or shows the token; the local supervisor's settings put the HTTP port on the bridge and advertise it,
with the CA joining hosts get; the local server certificate names the bridge and manager addresses and is renewed
when its names are not these. The join itself, against the real supervisor, is tests/cluster/test_cluster_join.py.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

JOIN_SH = Path(__file__).resolve().parents[1] / "worker_image" / "join.sh"
PIN = "sha256//" + "A" * 43 + "="
TOKEN = "cumulus_join_" + "s3cret" * 6


def run_join(*args: str, token: str | None = TOKEN, stdin_script: bool = True) -> subprocess.CompletedProcess:
    """Run join.sh the way the join line does (the script on stdin of `bash -s`), in a clean environment."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if token is not None:
        env["CUMULUS_JOIN_TOKEN"] = token
    if stdin_script:
        return subprocess.run(["bash", "-s", "--", *args], input=JOIN_SH.read_text(), env=env,
                              capture_output=True, text=True, timeout=30)
    return subprocess.run(["bash", str(JOIN_SH), *args], env=env, capture_output=True, text=True, timeout=30)


def test_join_script_is_valid_bash_and_shellcheck_clean():
    subprocess.run(["bash", "-n", str(JOIN_SH)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(JOIN_SH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("args, token, message", [
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN], None, "CUMULUS_JOIN_TOKEN is not set"),
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN], "not-a-join-token", "is not a join token"),
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN], "cumulus_join_a\nInjected: header", "is not a join token"),
    (["--pin", PIN], TOKEN, "--supervisor HOST:PORT is missing"),
    (["--supervisor", "https://10.213.0.1", "--pin", PIN], TOKEN, "is not HOST:PORT"),
    (["--supervisor", "10.213.0.1:50052"], TOKEN, "--pin must be sha256//BASE64"),
    (["--supervisor", "10.213.0.1:50052", "--pin", "sha256//short"], TOKEN, "--pin must be sha256//BASE64"),
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN, "--frobnicate", "1"], TOKEN, "unknown option --frobnicate"),
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN, "--ssh-address", "no port"], TOKEN, "is not HOST:PORT"),
    (["--supervisor", "10.213.0.1:50052", "--pin", PIN, "--docker-host", "/run/docker.sock"], TOKEN,
     "is not a Docker URL"),
])
def test_join_script_refuses_bad_input_before_doing_anything(args, token, message):
    before = set(Path("/tmp").glob("cumulus-join.*"))
    res = run_join(*args, token=token)
    assert res.returncode == 1, res
    assert res.stderr.startswith("join: ") and message in res.stderr, res.stderr
    assert res.stdout == ""  # no progress: it stopped before the first step
    assert "s3cret" not in res.stdout + res.stderr
    assert set(Path("/tmp").glob("cumulus-join.*")) == before


def test_join_script_help_works_from_a_pipe_and_from_a_file():
    for stdin_script in (True, False):
        res = run_join("--help", token=None, stdin_script=stdin_script)
        assert res.returncode == 0 and "--supervisor HOST:PORT --pin sha256//BASE64" in res.stdout, res


def test_local_supervisor_advertises_its_http_port_on_the_bridge(tmp_path, monkeypatch):
    from cumulus.config import load_settings
    from cumulus.local import state
    from cumulus.local import supervisor as local_supervisor

    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    monkeypatch.setattr(state, "CLUSTER_JSON", tmp_path / "cluster.json")
    assert local_supervisor.write_config() is True
    settings = load_settings(local_supervisor.config_path(), environ={})
    assert settings.server.http_listen == settings.server.http_advertise == "10.213.0.1:50052"
    assert settings.security.tls_ca == str(tmp_path / "tls" / "ca.pem")
    assert local_supervisor.write_config() is False  # unchanged: no restart

    (tmp_path / "tls" / "server.pem").unlink()  # a renewed certificate changes the file: the supervisor restarts
    assert local_supervisor.write_config() is True


def _server_names(path: Path) -> set[str]:
    from cryptography import x509

    sans = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName)) | {str(a) for a in sans.get_values_for_type(x509.IPAddress)}


def test_local_server_certificate_names_the_bridge_and_is_renewed_when_its_names_differ(tmp_path, monkeypatch):
    from cumulus.local import credentials

    monkeypatch.setattr(credentials, "SERVER_IPS", ("127.0.0.1", "::1"))  # what an older Cumulus made
    old, note = credentials.ensure_credentials(tmp_path)
    assert "server certificate" in note and "10.213.0.1" not in _server_names(old.server_cert)
    ca_before, token_before = old.ca.read_bytes(), old.admin_token
    monkeypatch.undo()

    creds, note = credentials.ensure_credentials(tmp_path)
    assert note == "made server certificate", note
    assert _server_names(creds.server_cert) == {"localhost", "127.0.0.1", "::1", "10.213.0.1", "10.213.0.10"}
    assert creds.ca.read_bytes() == ca_before and creds.admin_token == token_before  # clients keep trusting it
    assert creds.server_key.stat().st_mode & 0o777 == 0o600
    assert credentials.ensure_credentials(tmp_path)[1] == "kept"
    assert all(ipaddress.ip_address(a) for a in credentials.SERVER_IPS)


def test_a_node_made_again_at_its_address_keeps_its_mac():
    """A node removed and made again (``add-node`` after ``remove-node``) answers at once: the host's and the other
    nodes' neighbour caches still point at its MAC (a new random one left them sending into the void for 20 s+)."""
    from cumulus.local import state

    macs = [state.Node(i).mac for i in range(state.MAX_NODES)]
    assert state.Node(3).mac == state.Node(3).mac and len(set(macs)) == len(macs)
    assert all(int(mac.split(":")[0], 16) & 0b11 == 0b10 for mac in macs)  # locally administered, unicast
