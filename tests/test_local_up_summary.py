"""`cumulus local up` ends with the dashboard's URL, how to sign in and the CA a browser must trust (issue 16). The
admin token is shown on an interactive terminal only: when stdout is a pipe or a file (a CI log), just its file."""

from __future__ import annotations

import argparse
import io

import pytest

from cumulus.local import cli
from cumulus.local import cluster as local_cluster
from cumulus.local import supervisor as local_supervisor
from cumulus.local.credentials import LocalCredentials

TOKEN = "cumulus_" + "T" * 43


@pytest.fixture
def creds(tmp_path, monkeypatch):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    fake = LocalCredentials(ca=tmp_path / "tls/ca.pem", server_cert=tmp_path / "tls/server.pem",
                            server_key=tmp_path / "tls/server-key.pem", admin_token_file=token_file)
    monkeypatch.setattr(local_supervisor, "credentials", lambda: fake)
    return fake


@pytest.mark.parametrize(("deployed", "address"), [(False, "10.213.0.1:50052"), (True, "10.213.0.10:50052")])
def test_the_summary_names_the_dashboard_url_the_token_and_the_ca(creds, deployed, address):
    lines = cli.dashboard_summary(deployed, show_token=True).splitlines()
    assert lines[0] == f"dashboard: https://{address}/  (sign in with the admin token: {TOKEN})"
    assert str(creds.ca) in lines[1] and "trust" in lines[1]


def test_without_a_terminal_only_the_token_file_is_named(creds):
    text = cli.dashboard_summary(False, show_token=False)
    assert TOKEN not in text
    assert f"sign in with the admin token in {creds.admin_token_file}" in text


class _Stdout(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_up_prints_the_summary_last_with_the_token_only_on_a_terminal(creds, monkeypatch, tty):
    calls = []
    monkeypatch.setattr(local_cluster, "up", lambda *a, **kw: calls.append((a, kw)) or {})
    out = _Stdout(tty)
    monkeypatch.setattr("sys.stdout", out)
    args = argparse.Namespace(workers=2, verbose_setup=False, quiet=True, deployed=False)
    assert cli._up(args) == 0 and len(calls) == 1
    last = out.getvalue().splitlines()
    assert last[-2].startswith("dashboard: https://10.213.0.1:50052/  (sign in with the admin token")
    assert (TOKEN in out.getvalue()) is tty
