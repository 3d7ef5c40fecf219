"""build_service_spec: the one place a job's Swarm service spec is made (no Docker needed)."""

from __future__ import annotations

import dataclasses

import pytest

from cumulus.errors import InvalidRequest
from cumulus.resources.swarm import ServiceRequest, build_service_spec

IMAGE = "sha256:" + "ab" * 32
USER_IMAGE = "registry.example.com/team/torch@sha256:" + "cd" * 32
RUNNER_VOLUME = "cumulus-runner-" + "ef" * 8


def request(**kw) -> ServiceRequest:
    base = dict(
        job_id="job-1", supervisor_id="sup-a", node_id="5ikf0dj58h5bo7vd71v11tvbo", image=IMAGE, device_index=0,
        partition_id="partition_1_2_0001", code_dir="/var/lib/cumulus/jobs/job-1/code",
        output_dir="/var/lib/cumulus/jobs/job-1/output", env={"FOO": "bar"}, user="1001:1001",
    )
    base.update(kw)
    return ServiceRequest(**base)


def env_of(spec) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["task_template"]["ContainerSpec"]["Env"])


def test_defaults():
    spec = build_service_spec(request())
    assert spec["name"] == "cumulus-job-1"
    assert spec["mode"] == {"replicated": {"Replicas": 1}}
    tt = spec["task_template"]
    cs = tt["ContainerSpec"]
    assert cs["Image"] == IMAGE
    assert cs["Command"] == ["python3", "/opt/cumulus/runner.py"]
    assert cs["Init"] is True
    assert cs["StopGracePeriod"] == 1_000_000_000
    assert tt["RestartPolicy"]["Condition"] == "none" and tt["RestartPolicy"]["MaxAttempts"] == 0
    assert tt["Placement"]["Constraints"] == ["node.id==5ikf0dj58h5bo7vd71v11tvbo"]
    assert "Networks" not in tt  # "none": no attachment (Swarm has no 'none' network)
    mounts = {m["Target"]: m for m in cs["Mounts"]}
    assert mounts["/cumulus/code"]["Source"] == "/var/lib/cumulus/jobs/job-1/code"
    assert mounts["/cumulus/code"]["ReadOnly"] is True and mounts["/cumulus/code"]["Type"] == "bind"
    assert mounts["/cumulus/output"]["Source"] == "/var/lib/cumulus/jobs/job-1/output"
    assert not mounts["/cumulus/output"]["ReadOnly"]
    for labels in (spec["labels"], cs["Labels"]):
        assert labels["cumulus.job_id"] == "job-1"
        assert labels["cumulus.supervisor_id"] == "sup-a"
    env = env_of(spec)
    assert env == {"FOO": "bar", "CUMULUS_JOB_ID": "job-1", "CUMULUS_PARTITION_ID": "partition_1_2_0001",
                   "CUMULUS_DEVICE_INDEX": "0", "NVIDIA_VISIBLE_DEVICES": "void", "HOME": "/tmp", "TMPDIR": "/tmp",
                   "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def test_hardened_container():
    """Kubernetes' "restricted" bar: non-root, no capabilities, no new privileges, read-only root with a /tmp
    tmpfs (HOME there too), and memory, CPU and pids limits."""
    spec = build_service_spec(request(memory_bytes=512 << 20, cpus=1.5, pids_limit=100, tmpfs_bytes=64 << 20))
    tt = spec["task_template"]
    cs = tt["ContainerSpec"]
    assert cs["User"] == "1001:1001"
    assert cs["CapabilityDrop"] == ["ALL"] and "CapabilityAdd" not in cs
    assert cs["ReadOnly"] is True
    assert cs["Privileges"] == {"NoNewPrivileges": True}
    tmp = {m["Target"]: m for m in cs["Mounts"]}["/tmp"]
    assert tmp["Type"] == "tmpfs" and tmp["TmpfsOptions"] == {"SizeBytes": 64 << 20, "Mode": 0o1777}
    assert tt["Resources"] == {"Limits": {"NanoCPUs": 1_500_000_000, "MemoryBytes": 512 << 20, "Pids": 100}}
    env = env_of(spec)
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"


def test_user_env_cannot_move_home_off_the_tmpfs():
    env = env_of(build_service_spec(request(env={"HOME": "/root", "TMPDIR": "/var/tmp"})))
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"


def test_internet_network_is_the_filtered_job_network():
    tt = build_service_spec(request(network="internet"))["task_template"]
    assert tt["Networks"] == [{"Target": "cumulus-jobs"}]


def test_gpu_command_grace_user():
    spec = build_service_spec(request(gpu_uuid="GPU-1234", command=["python3", "-c", "pass"],
                                      stop_grace=0.25, device_index=3, user="1001:1001"))
    tt = spec["task_template"]
    assert tt["ContainerSpec"]["Command"] == ["python3", "-c", "pass"]
    assert tt["ContainerSpec"]["StopGracePeriod"] == 250_000_000
    assert tt["ContainerSpec"]["User"] == "1001:1001"
    env = env_of(spec)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1234"
    assert env["CUMULUS_DEVICE_INDEX"] == "3"


def test_cumulus_env_wins_over_user_env():
    env = env_of(build_service_spec(request(env={"CUMULUS_JOB_ID": "evil", "NVIDIA_VISIBLE_DEVICES": "all"})))
    assert env["CUMULUS_JOB_ID"] == "job-1"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "../etc"}, {"job_id": "Job"}, {"job_id": ""}, {"job_id": "a" * 64},
        {"node_id": "node.id==x"}, {"image": "cumulus-worker:local"}, {"image": "sha256:xyz"},
        {"network": "bridge"}, {"network": "ingress"}, {"network": "host"}, {"env": {"A=B": "c"}},
        {"env": {"1X": "c"}}, {"user": None}, {"user": "0:0"}, {"user": "00:1001"}, {"user": "1001"},
        {"user": "root"}, {"user": "1001:1001\n"}, {"memory_bytes": 0}, {"memory_bytes": 1 << 50},
        {"cpus": 0}, {"cpus": float("nan")}, {"cpus": True}, {"pids_limit": 0}, {"tmpfs_bytes": 0},
        {"stop_grace": -1}, {"stop_grace": float("nan")}, {"code_dir": "relative/code"},
        {"output_dir": "/var/lib/cumulus/jobs/../../etc"}, {"supervisor_id": ""},
        {"image": USER_IMAGE}, {"image": USER_IMAGE, "runner_volume": "my-volume"},
        {"image": "registry.example.com/team/torch:2.4", "runner_volume": RUNNER_VOLUME},
    ],
)
def test_rejects(change):
    with pytest.raises(InvalidRequest):
        build_service_spec(request(**change))


def test_spec_is_pure():
    req = request()
    a, b = build_service_spec(req), build_service_spec(dataclasses.replace(req))
    assert a == b
    assert req.env == {"FOO": "bar"}


@pytest.mark.parametrize("field, value", [
    ("job_id", "job-1\n"), ("node_id", "abcdefghij12\n"), ("image", "sha256:" + "a" * 64 + "\n"),
    ("env", {"NAME\n": "x"}),
])
def test_a_trailing_newline_never_passes_a_name_check(field, value):
    from cumulus.resources.files import check_job_id

    with pytest.raises(InvalidRequest):
        build_service_spec(request(**{field: value}))
    with pytest.raises(InvalidRequest):
        check_job_id("job-1\n")


def test_a_user_image_runs_by_digest_with_the_runner_volume_read_only_and_never_copied_into():
    spec = build_service_spec(request(image=USER_IMAGE, runner_volume=RUNNER_VOLUME))
    container = spec["task_template"]["ContainerSpec"]
    assert container["Image"] == USER_IMAGE
    runner = [m for m in container["Mounts"] if m["Target"] == "/opt/cumulus"]
    assert runner == [{"Target": "/opt/cumulus", "Source": RUNNER_VOLUME, "Type": "volume", "ReadOnly": True,
                       "VolumeOptions": {"NoCopy": True}}]
    assert env_of(spec)["PYTHONUNBUFFERED"] == "1"


def test_a_warm_service_is_labelled_and_its_runner_told_to_wait():
    spec = build_service_spec(request(warm=True))
    assert spec["labels"]["cumulus.warm"] == "1" and env_of(spec)["CUMULUS_WARM"] == "1"
    assert "cumulus.warm" not in build_service_spec(request())["labels"]
    assert "CUMULUS_WARM" not in env_of(build_service_spec(request()))


def test_the_create_time_key_is_what_a_container_keeps_from_its_creation():
    key = request().create_time_key()
    # What reaches a warm container with its job does not matter ...
    assert request(job_id="job-2", partition_id="p9", env={"A": "1"}, code_dir="/x/code", output_dir="/x/out",
                   warm=True).create_time_key() == key
    # ... what is fixed at creation does.
    for change in ({"memory_bytes": 1 << 30}, {"cpus": 1.0}, {"network": "internet"}, {"device_index": 1},
                   {"image": "sha256:" + "1" * 64}, {"gpu_uuid": "GPU-1"}, {"deps_dir": "/deps"},
                   {"lease_dir": "/l"}, {"stop_grace": 5.0}, {"node_id": "othernode0123"}):
        assert request(**change).create_time_key() != key, change
