"""``secret_env``: environment values that are never stored in clear nor logged (issue 13, item 9), without Docker.

The SDK (``@remote``, ``.options``, ``submit``/``run``, the CLI's ``--secret-env``/``--secret-env-file``) checks them
at the call site and sends them in the request only - never in the package or its manifest, never in a repr or an
error message; the supervisor checks them again (``spec_from_submission``) and keeps them in ``JobSpec.secret_env``;
a job's Swarm service references a Swarm secret holding them (not its env); the attempt owns that secret, created
before the service and removed after it; the runner reads the secret file into ``os.environ`` after the
requirements, never printing it; the job's history is scrubbed of every secret value, whatever its length. The
real cluster's side (``docker service inspect``, the journal file, the supervisor's log) is
``tests/cluster/test_secret_env.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import cloudpickle
import pytest
import trio

import cumulus
from cumulus.app import open_supervisor
from cumulus.cli import main
from cumulus.client.options import normalize_options
from cumulus.client.packaging import build_package
from cumulus.config import load_settings
from cumulus.errors import InvalidRequest
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.resources.swarm_secrets import secret_name
from cumulus.resources.swarm_spec import SECRET_ENV_FILE, SecretEnvRef, build_service_spec
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.submission import spec_from_submission
from tests.fakes.fake_api import running_fake_server
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import fake_cluster, settings as fake_settings, spec as fake_spec
from tests.test_runner import run_runner
from tests.test_swarm_spec import env_of, request as service_request

SECRET = "s3cr3t-Value-9f1c"
SHORT = "pw1"  # below history's MIN_SECRET_CHARS: an env value this short is not scrubbed, a secret one is


def job_reading_the_secret():
    import hashlib
    import os

    return hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest()


# ---- SDK options -------------------------------------------------------------------------------------------------

def test_options_take_secret_env_checked_like_env():
    opts = normalize_options({"env": {"PLAIN": "x"}, "secret_env": {"API_TOKEN": SECRET}})
    assert opts["secret_env"] == {"API_TOKEN": SECRET} and opts["env"] == {"PLAIN": "x"}


@pytest.mark.parametrize("secret_env, env, says", [
    ({"API_TOKEN": SECRET}, {"API_TOKEN": SECRET}, "API_TOKEN given in both env and secret_env"),
    ({"1BAD": SECRET}, {}, "secret_env name '1BAD' is not a valid variable name"),
    ({"LD_PRELOAD": SECRET}, {}, "secret_env name 'LD_PRELOAD'"),
    ({"CUMULUS_X": SECRET}, {}, "secret_env name 'CUMULUS_X'"),
    ({"T": SECRET + "\0"}, {}, "secret_env value of 'T' contains a NUL byte"),
    ({"T": SECRET * 2000}, {}, "secret_env value of 'T' is 34000 characters"),
    ({f"T{i}": SECRET * 1800 for i in range(20)}, {}, "secret_env is 612"),  # over Swarm's 500 KiB per secret
])
def test_bad_secret_env_is_refused_at_the_call_site_without_its_values(secret_env, env, says):
    with pytest.raises(InvalidRequest) as refused:
        normalize_options({"env": env, "secret_env": secret_env})
    assert says in str(refused.value)
    assert SECRET not in str(refused.value)


def test_a_remote_function_never_shows_nor_pickles_its_secret_values():
    f = cumulus.remote(gpu=0.25, secret_env={"API_TOKEN": SECRET})(job_reading_the_secret)
    g = f.options(secret_env={"OTHER": SECRET + "2"})
    for wrapper in (f, g):
        assert SECRET not in repr(wrapper)
    assert "secret_env={'API_TOKEN': '***'}" in repr(f)
    # Shipped inside a job (an argument, a closure): its options go into the package, so secret_env does not.
    for data in (pickle.dumps(f), cloudpickle.dumps(g)):
        assert SECRET.encode() not in data
    assert pickle.loads(pickle.dumps(f)).remote_options == {"gpu": 0.25}


def test_refused_by_the_decorator_at_once():
    with pytest.raises(InvalidRequest, match="API_TOKEN given in both env and secret_env"):
        cumulus.remote(env={"API_TOKEN": "a"}, secret_env={"API_TOKEN": SECRET})


# ---- the supervisor's check ----------------------------------------------------------------------------------------

def submission(**kw) -> pb.JobSubmission:
    return pb.JobSubmission(code_package=build_package(job_reading_the_secret), gpu=0.5, **kw)


def test_the_supervisor_keeps_secret_env_in_the_spec_only():
    settings = load_settings(environ={}, overrides={})
    spec = spec_from_submission(submission(env={"PLAIN": "1"}, secret_env={"API_TOKEN": SECRET}), settings)
    assert spec.secret_env == {"API_TOKEN": SECRET} and spec.env == {"PLAIN": "1"}
    assert SECRET not in repr(spec)


@pytest.mark.parametrize("env, secret_env, says", [
    ({"API_TOKEN": "x"}, {"API_TOKEN": SECRET}, "API_TOKEN given in both env and secret_env"),
    ({}, {"FOO\n": SECRET}, "secret_env name 'FOO\\n'"),
    ({"E": "e" * 30000}, {f"S{i}": SECRET * 1800 for i in range(20)}, "secret_env is 612"),
    ({f"E{i}": "e" * 30000 for i in range(30)}, {f"S{i}": SECRET * 1000 for i in range(10)},
     "env and secret_env together is 1"),  # 1 MiB over both: one environment for the job's process
])
def test_the_supervisor_refuses_bad_secret_env_without_its_values(env, secret_env, says):
    settings = load_settings(environ={}, overrides={})
    with pytest.raises(InvalidRequest) as refused:
        spec_from_submission(submission(env=env, secret_env=secret_env), settings)
    assert says in str(refused.value)
    assert SECRET not in str(refused.value)


# ---- SDK and CLI to the supervisor, over real gRPC ------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


def test_the_sdk_sends_secret_env_in_the_request_and_never_in_the_package(server):
    secret = "rt-" + os.urandom(12).hex()  # made here: this file's source goes into the package
    with cumulus.CumulusClient(server.address, log_to_driver=False) as client:
        ref = client.submit(job_reading_the_secret, env={"PLAIN": "1"}, secret_env={"API_TOKEN": secret})
        via_remote = cumulus.remote(secret_env={"API_TOKEN": secret}, address=server.address)(
            job_reading_the_secret).options(gpu=0.25)
        ref2 = client.submit_call(via_remote)
    for job_id in (ref.job_id, ref2.job_id):
        spec = server.api.jobs[job_id].record.spec
        assert spec.secret_env == {"API_TOKEN": secret}
        assert secret.encode() not in spec.package
        with zipfile.ZipFile(io.BytesIO(spec.package)) as zf:
            assert "API_TOKEN" not in json.loads(zf.read("cumulus-job.json"))["env"]
            assert all(secret.encode() not in zf.read(name) for name in zf.namelist())


def test_the_cli_takes_secret_env_from_a_file_and_flags(server, tmp_path, capsys):
    jobfile = tmp_path / "secretjob.py"
    jobfile.write_text("def f():\n    return 1\n")
    secrets_file = tmp_path / "job.secrets"
    secrets_file.write_text(f"# the job's tokens\n\nAPI_TOKEN={SECRET}\nOTHER= spaced value =x\n")
    code = main(["submit", f"{jobfile}:f", "--detach", "-o", "json", "--address", server.address,
                 "--secret-env-file", str(secrets_file), "--secret-env", f"THIRD={SECRET}3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    spec = server.api.jobs[json.loads(out)["job_id"]].record.spec
    assert spec.secret_env == {"API_TOKEN": SECRET, "OTHER": " spaced value =x", "THIRD": SECRET + "3"}


@pytest.mark.parametrize("argv, says", [
    (["--secret-env", SECRET], "--secret-env: use NAME=VALUE"),
    (["--secret-env-file", "FILE"], "line 2 is not NAME=VALUE"),
    (["--secret-env", f"API_TOKEN={SECRET}", "--env", "API_TOKEN=x"], "API_TOKEN given in both env and secret_env"),
])
def test_cli_mistakes_never_echo_a_secret(server, tmp_path, capsys, argv, says):
    jobfile = tmp_path / "secretjob.py"
    jobfile.write_text("def f():\n    return 1\n")
    bad = tmp_path / "bad.secrets"
    bad.write_text(f"API_TOKEN={SECRET}\n{SECRET}\n")
    argv = [str(bad) if a == "FILE" else a for a in argv]
    code = main(["submit", f"{jobfile}:f", "--detach", "--address", server.address, *argv])
    out, err = capsys.readouterr()
    assert code in (1, 2) and says in err, err
    assert SECRET not in out + err


# ---- the service spec and the runner -------------------------------------------------------------------------------

def test_the_service_references_the_secret_file_and_its_env_holds_no_value():
    ref = SecretEnvRef("k1jzw0w3oz3s1wk0ejq4x5yzf", secret_name("job-1", 2))
    spec = build_service_spec(service_request(secret_env=ref, user="1001:1002"))
    (secret,) = spec["task_template"]["ContainerSpec"]["Secrets"]
    assert secret == {"SecretID": ref.id, "SecretName": "cumulus-job-1-env-2",
                      "File": {"Name": SECRET_ENV_FILE, "UID": "1001", "GID": "1002", "Mode": 0o400}}
    assert "Secrets" not in build_service_spec(service_request())["task_template"]["ContainerSpec"]
    assert set(env_of(spec)) == set(env_of(build_service_spec(service_request())))


def test_a_secret_name_stays_within_swarms_64_characters():
    assert secret_name("a" * 63, 12).startswith("cumulus-") and len(secret_name("a" * 63, 12)) <= 64


def test_the_runner_sets_the_secret_env_for_the_job_and_never_prints_it(tmp_path):
    secret_file = tmp_path / "cumulus-secret-env"
    secret_file.write_text(json.dumps({"API_TOKEN": SECRET, "CUMULUS_JOB_ID": "spoofed"}))
    proc, outcome = run_runner(tmp_path, build_package(job_reading_the_secret),
                               env={"CUMULUS_SECRET_ENV_FILE": str(secret_file)})
    assert proc.returncode == 0, proc.stderr
    import hashlib

    assert outcome.value == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET not in proc.stdout + proc.stderr


def test_an_unreadable_secret_file_fails_the_job_without_showing_it(tmp_path):
    secret_file = tmp_path / "cumulus-secret-env"
    secret_file.write_text(f"API_TOKEN={SECRET}")  # not JSON
    proc, outcome = run_runner(tmp_path, build_package(job_reading_the_secret),
                               env={"CUMULUS_SECRET_ENV_FILE": str(secret_file)})
    assert proc.returncode == 2 and outcome.exc_type == "cumulus.SecretEnvUnreadable", proc.stderr
    assert SECRET not in proc.stdout + proc.stderr + outcome.exc_message


# ---- history and the attempt ---------------------------------------------------------------------------------------

def test_history_is_scrubbed_of_secret_values_whatever_their_length():
    record = JobRecord("job-1", JobSpec(package=b"zip", env={"FLAG": SHORT}, secret_env={"T": SHORT}))
    history = []
    record.journal_to(None, history.append)
    record.add_message(f"the engine said {SHORT}")
    record.set_state(JobState.FAILED, f"container_failed: {SHORT}")
    assert history and all(SHORT not in event.payload() for event in history), history


async def test_a_secret_value_the_job_prints_is_masked_in_its_log():
    record = JobRecord("job-1", JobSpec(package=b"zip", secret_env={"API_TOKEN": SECRET, "PIN": "12"}))
    record.add_log("stdout", f"token={SECRET} pin=12")
    async with trio.open_nursery() as nursery:  # the replay of a late subscriber
        events = []

        async def follow() -> None:
            async for event in record.events(replay_logs=True):
                events.append(event)

        nursery.start_soon(follow)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert [e.log for e in events if e.log] == [("stdout", "token=*** pin=12")]  # 2 characters: left alone


async def test_an_attempt_owns_its_secret_from_before_its_service_to_after_it(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(fake_spec(secret_env={"API_TOKEN": SECRET}))
        with trio.fail_after(60):
            await record.torn_down.wait()
        assert record.state is JobState.COMPLETED, record.reason
        assert record.teardown.released == ("container stop", "service", "secret env", "task watch", "checkpoint copy",
                                            "files",
                                            "partition", "reservation")
        name = secret_name(record.job_id, 1)
        assert world.secret_log == [f"created {name}", f"removed {name} (services of the job left: 0)"]
        assert world.secrets == {}
        plain = await sup.submit(fake_spec())  # no secret_env: no secret
        with trio.fail_after(60):
            await plain.torn_down.wait()
        assert "secret env" not in plain.teardown.released and len(world.secret_log) == 2


async def test_a_readopted_job_removes_its_secret_and_a_dead_jobs_secret_is_reaped(tmp_path):
    """A supervisor 'SIGKILLed' while a job with secret_env runs (nothing released): the next one re-adopts the
    job and removes its secret after its service; a secret of this supervisor whose job is not live is reaped."""
    import sqlite3

    path, copy = tmp_path / "journal.sqlite3", tmp_path / "after-crash.sqlite3"
    conf = {"lease.ttl": 3.0, "lease.renew_interval": 0.5, "security.secret_key_file": str(tmp_path / "key")}
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        world.lease_ttl = 3.0
        async with open_supervisor(fake_settings(**{"journal.path": str(path)}, **conf),
                                               backends=world.backends(), serve_rpc=False) as sup:
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.05)
            record = await sup.submit(fake_spec(gpu=0.25, runtime=3, secret_env={"API_TOKEN": SECRET}))
            async for event in record.events():
                if event.state is JobState.RUNNING:
                    break
            await trio.sleep(0.3)
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)  # the journal as a killed process leaves it
            world.frozen = True
        world.frozen = False
        world.secrets["sec9999999xyz"] = ({"cumulus.job_id": "unit-deadbeef0000", "cumulus.supervisor_id": "unit",
                                           "name": "cumulus-unit-deadbeef0000-env-1"}, {"T": "x"})
        async with open_supervisor(fake_settings(**{"journal.path": str(copy)}, **conf),
                                               backends=world.backends(), serve_rpc=False) as sup:
            recovered = await sup.get(record.job_id)
            with trio.fail_after(30):
                await recovered.torn_down.wait()
        nursery.cancel_scope.cancel()
    assert (recovered.state, recovered.attempt) == (JobState.COMPLETED, 1), recovered.reason  # adopted
    assert "secret env" in recovered.teardown.released and recovered.teardown.leaked == ()
    name = secret_name(record.job_id, 1)
    assert world.secret_log == [f"created {name}", "removed cumulus-unit-deadbeef0000-env-1 (services of the job "
                                "left: 0)", f"removed {name} (services of the job left: 0)"]
    assert world.secrets == {}
