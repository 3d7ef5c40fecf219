"""The local cluster's dockerds trust the supervisor's image registry (its HTTP port, ``/v2/``): the local CA is
written to ``/etc/docker/certs.d/<registry>/ca.crt``, which is where dockerd looks for a registry's CA (read at
each pull: no restart needed). The nodes are network namespaces sharing this machine's filesystem, so one file per
registry address serves every node, as the join script's copy does on a real host.

The registries: the supervisor process's HTTP port on the bridge (``10.213.0.1:50052``) and the deployed
supervisor's on the manager (``10.213.0.10:50052``); the local server certificate names both addresses.
`local up` writes them, `local down` removes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cumulus.local import state

CERTS_DIR = Path("/etc/docker/certs.d")
HTTP_PORT = 50052


def local_registries() -> tuple[str, ...]:
    return (f"{state.BRIDGE_ADDR}:{HTTP_PORT}", f"{state.Node(0).address}:{HTTP_PORT}")


def trust_local_registries(ca: Path, certs_dir: Path = CERTS_DIR) -> str:
    """Write ``ca`` as the CA of every local registry address (atomically; unchanged files are left alone)."""
    pem = ca.read_bytes()
    written = []
    for registry in local_registries():
        target = certs_dir / registry / "ca.crt"
        if target.is_file() and target.read_bytes() == pem:
            continue
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = target.with_name("ca.crt.tmp")
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        written.append(registry)
    return f"dockerd trusts the registry at {', '.join(written)}" if written else ""


def untrust_local_registries(certs_dir: Path = CERTS_DIR) -> None:
    """Remove what :func:`trust_local_registries` wrote."""
    for registry in local_registries():
        directory = certs_dir / registry
        (directory / "ca.crt").unlink(missing_ok=True)
        (directory / "ca.crt.tmp").unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:  # not there, or holds files of the machine's own (client certificates)
            pass


__all__ = ["CERTS_DIR", "local_registries", "trust_local_registries", "untrust_local_registries"]
