"""The one line an admin runs as root on a new host (``cumulus worker join-command``), and what it pins.

    curl -fsSk --proto =https --pinnedpubkey 'sha256//PIN' https://ADVERTISE/join/worker.sh \\
      | CUMULUS_JOIN_TOKEN='cumulus_join_...' bash -s -- --supervisor ADVERTISE --pin 'sha256//PIN'

``PIN`` is the SHA-256 of the DER SubjectPublicKeyInfo of the HTTP port's certificate (``security.tls_cert``), in
base64: what ``curl --pinnedpubkey`` checks. ``-k`` only skips the CA check; the pin is still enforced, so a man in
the middle is refused and nothing is trusted on first use. ``ADVERTISE`` is ``server.http_advertise``: the
HOST:PORT of the HTTP port as the new host reaches it. :func:`check_can_join` says why a supervisor cannot hand
out join lines (no TLS, no advertised address, client certificates required); every such refusal is a
:class:`JoinNotConfigured` naming the setting to fix.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shlex
from pathlib import Path

from cumulus.config import Settings, parse_host_port
from cumulus.errors import RequestRejected

SCRIPT_PATH = "/join/worker.sh"
FILES_PATH = "/join/worker-files.tar.gz"
REGISTER_PATH = "/v1/join/register"
COMPLETE_PATH = "/v1/join/complete"


class JoinNotConfigured(RequestRejected):
    """The supervisor's settings do not allow joining hosts (gRPC ``FAILED_PRECONDITION``); says which to set."""


def check_can_join(settings: Settings) -> str:
    """The advertised ``HOST:PORT``; :class:`JoinNotConfigured` when this supervisor cannot serve a join."""
    security, advertise = settings.security, settings.server.http_advertise
    if security.insecure:
        raise JoinNotConfigured("this supervisor runs without TLS (security.insecure): a join line would send its "
                                "token in clear and could not pin the supervisor; run it with TLS to join hosts")
    if not settings.server.http_listen:
        raise JoinNotConfigured("the HTTP port is off (server.http_listen is empty); joining hosts fetch the "
                                "script from it: set server.http_listen and server.http_advertise")
    if security.client_ca:
        raise JoinNotConfigured("the HTTP port requires client certificates (security.client_ca: mutual TLS), "
                                "which a new host does not have; join it the manual way (docs/local-cluster.md, "
                                "\"Joining a real GPU machine\") or serve without security.client_ca")
    if not advertise:
        raise JoinNotConfigured("server.http_advertise is empty: set it to the HOST:PORT at which new hosts reach "
                                "this supervisor's HTTP port (server.http_listen)")
    host, _ = parse_host_port(advertise, key="server.http_advertise")
    if is_local_only(host):
        raise JoinNotConfigured(f"server.http_advertise is {advertise}, which another host cannot reach; set the "
                                f"address of this machine that new hosts reach (not loopback, not a wildcard)")
    return advertise


def is_local_only(host: str) -> bool:
    """Loopback or a wildcard: an address no other host reaches this one at."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def public_key_pin(cert_path: str) -> str:
    """``sha256//BASE64`` of the first certificate's public key in the PEM file ``cert_path``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).expanduser().read_bytes())
    except (OSError, ValueError) as error:
        raise JoinNotConfigured(f"cannot read the certificate security.tls_cert ({cert_path}): {error}") from None
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def script_url(advertise: str) -> str:
    return f"https://{advertise}{SCRIPT_PATH}"


def join_command(advertise: str, pin: str, token: str) -> str:
    """The line to run as root on the new host."""
    fetch = ["curl", "-fsSk", "--proto", "=https", "--pinnedpubkey", pin, script_url(advertise)]
    run = ["bash", "-s", "--", "--supervisor", advertise, "--pin", pin]
    return f"{shlex.join(fetch)} | CUMULUS_JOIN_TOKEN={shlex.quote(token)} {shlex.join(run)}"


__all__ = ["COMPLETE_PATH", "FILES_PATH", "REGISTER_PATH", "SCRIPT_PATH", "JoinNotConfigured", "check_can_join",
           "is_local_only", "join_command", "public_key_pin", "script_url"]
