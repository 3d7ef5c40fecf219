"""`cumulus local up`'s package step finishes a dpkg run that an interrupted `up` left half done.

An `up` killed while dpkg ran triggers leaves every package installed but dpkg refusing all later apt runs; the
step must repair that even when nothing is missing. The commands are recorded, not run (no apt here)."""

import pytest

from cumulus.local import cluster


@pytest.fixture
def recorded(monkeypatch):
    commands: list[list[str]] = []
    monkeypatch.setattr(cluster.children, "run", lambda cmd, **kw: commands.append(cmd))
    return commands


def test_interrupted_dpkg_is_finished_when_nothing_is_missing(monkeypatch, recorded):
    monkeypatch.setattr(cluster, "missing_packages", lambda pkgs: [])
    monkeypatch.setattr(cluster, "_dpkg_interrupted", lambda: True)
    note = cluster.ensure_packages()
    assert recorded == [["dpkg", "--configure", "-a"]]
    assert "interrupted dpkg" in note


def test_healthy_machine_with_everything_runs_nothing(monkeypatch, recorded):
    monkeypatch.setattr(cluster, "missing_packages", lambda pkgs: [])
    monkeypatch.setattr(cluster, "_dpkg_interrupted", lambda: False)
    assert cluster.ensure_packages() == "all present"
    assert recorded == []


def test_missing_packages_are_installed_after_dpkg_is_finished(monkeypatch, recorded):
    monkeypatch.setattr(cluster, "missing_packages", lambda pkgs: ["clinfo"])
    cluster.ensure_packages()
    assert [c[0] for c in recorded] == ["apt-get", "dpkg", "apt-get"]
    assert recorded[-1][-1] == "clinfo"

