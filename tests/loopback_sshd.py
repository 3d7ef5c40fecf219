"""A real OpenSSH sshd on loopback for tests of cumulus.resources.ssh that need no cluster: started on a free port
of 127.0.0.1 with its own host key, authorized key and pinned known_hosts, for the user running the tests, with
OpenSSH's own ``sftp-server`` as its SFTP subsystem. Stopped (and its directory removed by pytest) afterwards.

Skips the test when this machine has no ``sshd`` (or it will not start).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server")


@dataclass(frozen=True)
class LoopbackSshd:
    host: str
    port: int
    user: str
    key_path: str
    known_hosts_path: str
    root: Path  # a directory the tests may use, on the same host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_sshd(tmp: Path) -> Iterator[LoopbackSshd]:
    sftp_server = next((p for p in SFTP_SERVERS if os.path.exists(p)), None)
    if not os.path.exists(SSHD) or sftp_server is None or not shutil.which("ssh-keygen"):
        pytest.skip("no OpenSSH sshd / sftp-server / ssh-keygen on this machine")
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    port = _free_port()
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {(tmp / 'host_key.pub').read_text()}")
    user = getpass.getuser()
    (tmp / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {tmp / 'host_key'}\nPidFile none\nUsePAM no\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPermitRootLogin prohibit-password\nAllowUsers {user}\n"
        f"StrictModes no\nUseDNS no\nPrintMotd no\nMaxSessions 50\nSubsystem sftp {sftp_server}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {(tmp / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("sshd did not listen within 20 s")
                time.sleep(0.05)
        files = tmp / "files"
        files.mkdir()
        yield LoopbackSshd("127.0.0.1", port, user, str(tmp / "client_key"), str(tmp / "known_hosts"), files)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
