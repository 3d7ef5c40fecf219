"""The local cluster's credentials, made by `cumulus local up` like kind or k3s do: a CA and a server certificate
for the supervisor's TLS, an admin token, and the client config that makes the CLI and SDK use them with no step of
the user's.

Files (under ``<state>/tls`` and ``<state>``): ``ca.pem`` (the CA certificate, public), ``ca-key.pem``,
``server.pem`` (for 127.0.0.1, ::1, localhost, and the local cluster's bridge 10.213.0.1 and manager 10.213.0.10,
which joining hosts reach the HTTP port at), ``server-key.pem`` and ``admin.token``, the last three and the CA key
mode 0600. Each is made once and kept (a certificate is renewed when it has less than 30 days left, the server's
also when its names differ from these), so re-running `local up` changes nothing a client already trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cumulus.identity import new_token_secret

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1", "10.213.0.1", "10.213.0.10")


@dataclass(frozen=True)
class LocalCredentials:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_token_file: Path

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _fresh(path: Path) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > RENEW_BEFORE


def _has_server_names(path: Path) -> bool:
    """The certificate's subject alternative names are exactly SERVER_NAMES and SERVER_IPS."""
    from cryptography import x509

    try:
        sans = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return (set(sans.get_values_for_type(x509.DNSName)) == set(SERVER_NAMES)
            and set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(a) for a in SERVER_IPS})


def _certificate(subject: str, key, issuer_name, issuer_key, days: int, *, ca: bool,  # type: ignore[no-untyped-def]
                 client: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    elif client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in SERVER_NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_IPS]),
            critical=False).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def ensure_credentials(state_dir: Path) -> tuple[LocalCredentials, str]:
    """Make what is missing (or about to expire); returns the credentials and a note for the progress line."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    tls = state_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True, mode=0o755)
    creds = LocalCredentials(tls / "ca.pem", tls / "server.pem", tls / "server-key.pem", state_dir / "admin.token")
    ca_key_path = tls / "ca-key.pem"
    made = []
    pem = serialization.Encoding.PEM
    private = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    if not (_fresh(creds.ca) and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(ca_key_path, ca_key.private_bytes(**private))
        creds.ca.write_bytes(_certificate("cumulus local CA", ca_key, None, None, CA_DAYS, ca=True).public_bytes(pem))
        creds.server_cert.unlink(missing_ok=True)  # signed by the old CA
        made.append("CA")
    if not (_fresh(creds.server_cert) and _has_server_names(creds.server_cert) and creds.server_key.exists()):
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(creds.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(creds.server_key, key.private_bytes(**private))
        cert = _certificate("cumulus supervisor", key, ca_cert.subject, ca_key, SERVER_DAYS, ca=False)
        creds.server_cert.write_bytes(cert.public_bytes(pem))
        made.append("server certificate")
    if not creds.admin_token_file.exists():
        _write_private(creds.admin_token_file, (new_token_secret() + "\n").encode())
        made.append("admin token")
    return creds, ("made " + ", ".join(made)) if made else "kept"


def issue_client_certificate(creds: LocalCredentials, name: str, directory: Path, days: int = 365
                             ) -> tuple[Path, Path]:
    """A client certificate for mutual TLS, signed by the local CA: ``(<name>.pem, <name>-key.pem)`` in
    ``directory`` (the key 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key((creds.ca.parent / "ca-key.pem").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(creds.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, ca.subject, ca_key, days, ca=False, client=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path


def client_settings(creds: LocalCredentials, address: str) -> dict[str, str]:
    """The client config that reaches the local supervisor as its admin."""
    return {"address": address, "ca": str(creds.ca), "token": creds.admin_token}
