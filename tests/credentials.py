"""The test run's TLS and token credentials: every supervisor a test starts serves TLS with tokens (as in
production), and every client of the tests trusts them through a client config (``CUMULUS_CONFIG``, set for the
whole run by ``tests/conftest.py``, so that neither a developer's own config nor the local cluster's is used)."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Iterator

from cumulus.identity import Caller

TEST_ADMIN = Caller("tester", admin=True)


@functools.cache
def run_credentials():  # type: ignore[no-untyped-def]
    """The run's CA, server certificate and admin token: made once, in a private dir that child processes inherit
    through ``CUMULUS_TEST_TLS_DIR`` (so a server process and its clients trust the same CA)."""
    from cumulus.local.credentials import ensure_credentials

    directory = os.environ.get("CUMULUS_TEST_TLS_DIR") or tempfile.mkdtemp(prefix="cumulus-test-tls-")
    os.environ["CUMULUS_TEST_TLS_DIR"] = directory
    creds, _ = ensure_credentials(Path(directory))
    return creds


def security_yaml() -> str:
    """The ``security:`` section of a supervisor config file that uses the test credentials."""
    creds = run_credentials()
    return (f"security:\n  tls_cert: \"{creds.server_cert}\"\n  tls_key: \"{creds.server_key}\"\n"
            f"  admin_token_file: \"{creds.admin_token_file}\"\n")


def security_overrides() -> dict[str, str]:
    creds = run_credentials()
    return {"security.tls_cert": str(creds.server_cert), "security.tls_key": str(creds.server_key),
            "security.admin_token_file": str(creds.admin_token_file)}


def install_client_config() -> Path:
    """Write the run's client config (CA and admin token, no address) and point ``CUMULUS_CONFIG`` at it."""
    from cumulus.client.connection import write_client_config

    creds = run_credentials()
    path = creds.ca.parent.parent / "client-config.yaml"
    write_client_config(path, {"ca": str(creds.ca), "token": creds.admin_token})
    os.environ["CUMULUS_CONFIG"] = str(path)
    for name in ("CUMULUS_TOKEN", "CUMULUS_INSECURE"):
        os.environ.pop(name, None)
    return path


class FixedCredentials:
    """Credentials for a fake supervisor: the run's admin token is :data:`TEST_ADMIN`, plus any given here."""

    def __init__(self, extra: dict[str, Caller] | None = None) -> None:
        self.callers = {run_credentials().admin_token: TEST_ADMIN, **(extra or {})}

    def caller_for(self, secret: str) -> Caller | None:
        return self.callers.get(secret)


@contextlib.contextmanager
def users_client_config() -> Iterator[None]:
    """For the block, ``CUMULUS_CONFIG`` is unset: what `cumulus local up` writes goes to the user's own client
    config, as it does outside the tests, never over the run's."""
    run_config = os.environ.pop("CUMULUS_CONFIG", None)
    try:
        yield
    finally:
        if run_config is not None:
            os.environ["CUMULUS_CONFIG"] = run_config
