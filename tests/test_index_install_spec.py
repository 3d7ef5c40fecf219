"""A private index at install time (issue 17, item 5), without Docker: the installer's pip uses the job's index and
no other source; the job owner's credentials reach it only as a netrc file of a Swarm secret made for the one
install (path in ``NETRC``, the file readable by the installer's uid alone), in no env value, label, command or
log; the secret is removed after the installer; the cache entry of a private index is its owner's."""

from __future__ import annotations

import json
import netrc
import subprocess
import sys

import pytest
import trio

from cumulus.index_credentials import IndexCredential
from cumulus.resources.index_netrc import NETRC_FILE, NETRC_PATH, SECRET_KIND_NETRC, netrc_bytes, open_install_netrc
from cumulus.resources.requirements_cache import cache_key
from cumulus.resources.requirements_install import build_install_spec, pip_command
from cumulus.resources.swarm_spec import LABEL_JOB, LABEL_SUPERVISOR, SecretEnvRef
from cumulus.resources.swarm_client import SwarmError
from tests.test_requirements_cache import IMAGE, install_service

HTTPS_INDEX = "https://pypi.example.com/team/simple/"
HTTP_INDEX = "http://10.213.0.1:18080/simple/"
USERNAME, PASSWORD = "ci-bot", 'tok-3f9a "q" \\ # x'
NETRC_REF = SecretEnvRef("k1jzw0w3oz3s1wk0ejq4x5yzf", "cumulus-req-0123456789abcdef-00ff00ff-netrc")


def container_of(spec: dict) -> dict:
    return spec["task_template"]["ContainerSpec"]


def test_pip_installs_from_the_private_index_alone():
    svc = install_service(index_url=HTTPS_INDEX, wheelhouse="/var/lib/cumulus/wheelhouse", no_index=True)
    command = pip_command(svc)
    line = command[2]
    assert f"--index-url {HTTPS_INDEX}" in line and " --isolated " in line  # no PIP_* env nor pip.conf adds one
    assert "--find-links" not in line and "--no-index" not in line and "--extra-index-url" not in line
    assert "--trusted-host" not in line  # https needs no exception
    mounts = {m["Target"] for m in container_of(build_install_spec(svc))["Mounts"]}
    assert "/cumulus/wheelhouse" not in mounts  # the index is the only source
    http = pip_command(install_service(index_url=HTTP_INDEX))[2]
    assert "--trusted-host 10.213.0.1:18080" in http  # pip ignores plain http unless told (a private host only)
    # pip says why an index refused only in its debug log: those lines go into the install log on failure
    assert "Client Error" in http and "ERROR: the index answered" in http and "exit $rc" in http
    plain = pip_command(install_service(wheelhouse="/w", no_index=True))[2]  # no index: as before
    assert plain.startswith("exec ") and "--index-url" not in plain and "--isolated" not in plain


def test_the_credentials_reach_the_installer_only_as_a_secret_file():
    svc = install_service(index_url=HTTP_INDEX, netrc=NETRC_REF, uid=1001, gid=1002)
    spec = build_install_spec(svc)
    container = container_of(spec)
    (secret,) = container["Secrets"]
    assert secret == {"SecretID": NETRC_REF.id, "SecretName": NETRC_REF.name,
                      "File": {"Name": NETRC_FILE, "UID": "1001", "GID": "1002", "Mode": 0o400}}
    assert f"NETRC={NETRC_PATH}" in container["Env"] and NETRC_PATH == f"/run/secrets/{NETRC_FILE}"
    text = json.dumps(spec, default=str)
    assert USERNAME not in text and "tok-3f9a" not in text  # nowhere in env, labels, command or mounts
    assert LABEL_JOB not in spec["labels"]
    no_creds = build_install_spec(install_service(index_url=HTTP_INDEX))
    assert "Secrets" not in container_of(no_creds) and not any(e.startswith("NETRC=") for e in
                                                               container_of(no_creds)["Env"])
    with pytest.raises(ValueError, match="without an index URL"):
        build_install_spec(install_service(netrc=NETRC_REF))


def test_the_netrc_file_reads_back_with_pythons_netrc(tmp_path):
    data = netrc_bytes(HTTP_INDEX, IndexCredential(USERNAME, PASSWORD))
    assert data.startswith(b"machine 10.213.0.1 ") and data.endswith(b"\n") and data.count(b"\n") == 1
    path = tmp_path / "netrc"
    path.write_bytes(data)
    assert netrc.netrc(str(path)).authenticators("10.213.0.1") == (USERNAME, "", PASSWORD)
    # pip's own lookup, as the installer runs it (NETRC points at the file; looked up by host, not port)
    code = ("import sys; from pip._vendor.requests.utils import get_netrc_auth; "
            f"print(repr(get_netrc_auth({HTTP_INDEX + 'pkg/'!r})))")
    out = subprocess.run([sys.executable, "-c", code], env={"NETRC": str(path)}, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == repr((USERNAME, PASSWORD)), out.stderr
    with pytest.raises(ValueError, match="printable"):
        netrc_bytes(HTTP_INDEX, IndexCredential(USERNAME, "two\nlines"))


def test_a_private_index_entry_is_its_owners():
    plain = cache_key(["pkg==1"], IMAGE)
    assert cache_key(["pkg==1"], IMAGE, "", "alice") == plain  # no index: shared as before, key unchanged
    mine = cache_key(["pkg==1"], IMAGE, HTTPS_INDEX, "alice")
    assert mine not in (plain, cache_key(["pkg==1"], IMAGE, HTTPS_INDEX, "bob"),
                        cache_key(["pkg==1"], IMAGE, HTTP_INDEX, "alice"))
    assert cache_key([" pkg==1", "pkg==1"], IMAGE, HTTPS_INDEX, "alice") == mine  # the same list: the same entry


class FakeSecrets:
    """A SwarmClient's secret calls, recorded."""

    def __init__(self, fail_create: bool = False) -> None:
        self.calls: list[tuple] = []
        self.data: dict[str, bytes] = {}
        self.fail_create = fail_create

    async def _call(self, what, fn, *args, abandon=True, **kw):
        await trio.lowlevel.checkpoint()
        self.calls.append((fn, args[0], kw.get("labels")))
        if fn == "create_secret":
            if self.fail_create:
                raise SwarmError(f"{what}: refused")
            self.data[args[0]] = args[1]
            return {"ID": "k1jzw0w3oz3s1wk0ejq4x5yzf"}
        if fn == "remove_secret":
            return None
        raise AssertionError(fn)


async def test_the_secret_lives_for_the_install_only(caplog):
    client = FakeSecrets()
    async with open_install_netrc(client, name="cumulus-req-x-netrc", supervisor_id="sup-1", job_id="j-1",
                                  index_url=HTTPS_INDEX, credential=IndexCredential(USERNAME, PASSWORD)) as ref:
        assert ref == SecretEnvRef("k1jzw0w3oz3s1wk0ejq4x5yzf", "cumulus-req-x-netrc")
        assert [c[0] for c in client.calls] == ["create_secret"]
    assert [c[0] for c in client.calls] == ["create_secret", "remove_secret"]
    labels = client.calls[0][2]
    # reaped with its supervisor's orphans (no live job), never taken for the job's own secret env
    assert labels == {LABEL_SUPERVISOR: "sup-1", "cumulus.secret": SECRET_KIND_NETRC,
                      "cumulus.install_for_job": "j-1"}
    assert client.data["cumulus-req-x-netrc"] == netrc_bytes(HTTPS_INDEX, IndexCredential(USERNAME, PASSWORD))
    none = FakeSecrets()
    async with open_install_netrc(none, name="n", supervisor_id="s", job_id="j", index_url=HTTPS_INDEX,
                                  credential=None) as ref:
        assert ref is None
    assert none.calls == []  # no credentials stored: no secret at all
    failing = FakeSecrets(fail_create=True)
    with pytest.raises(SwarmError) as raised:
        async with open_install_netrc(failing, name="n2", supervisor_id="s", job_id="j", index_url=HTTPS_INDEX,
                                      credential=IndexCredential(USERNAME, PASSWORD)):
            pass
    assert PASSWORD not in str(raised.value) and USERNAME not in str(raised.value)
    assert [c[0] for c in failing.calls] == ["create_secret", "remove_secret"]  # by name, in case it was made
    assert PASSWORD not in caplog.text


class FakeInstallSwarm:
    """The Swarm as the installer's service sees it: after its removal, tasks asked for by service id are
    "not found" (the service is gone) while the task, asked for by name, shuts down for a moment."""

    def __init__(self) -> None:
        self.removed_at: float | None = None
        self.asked: list[dict] = []

    async def _call(self, what, fn, *args, abandon=True, **kw):
        import docker.errors

        await trio.lowlevel.checkpoint()
        if fn == "create_service":
            return {"ID": "svc1"}
        if fn == "tasks":
            self.asked.append(kw["filters"])
            if "service" in kw["filters"]:
                if self.removed_at is not None:
                    raise docker.errors.NotFound("service svc1 not found")
                return [{"Status": {"State": "complete", "ContainerStatus": {"ExitCode": 0}}}]
            return [{"Status": {"State": "shutdown"}}] if trio.current_time() - self.removed_at < 1 else []
        raise AssertionError(fn)

    async def remove_service(self, service_id):
        self.removed_at = trio.current_time()


async def test_the_installers_removal_is_confirmed_once_its_task_is_gone(autojump_clock):
    from cumulus.resources.requirements_install import run_install_service

    swarm = FakeInstallSwarm()
    svc = install_service(index_url=HTTPS_INDEX)

    async def poll():
        pass

    start = trio.current_time()
    end = await run_install_service(swarm, svc, timeout=60, remove_timeout=30, on_poll=poll)
    assert end.succeeded
    assert trio.current_time() - start < 5  # not the whole removal bound (30 s) on every install
    assert {"name": svc.name} in swarm.asked
