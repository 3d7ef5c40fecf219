"""Settings: YAML file, environment, overrides; every error names the key and says what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulus.config import default_address, load_settings, parse_host_port
from cumulus.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_file_loads_and_is_complete():
    settings = load_settings(ROOT / "config.yaml.example", environ={})
    assert settings.grpc.listen == "127.0.0.1:50051"
    assert settings.supervisor_id == "main"
    assert settings.jobs.max_duration == 86400


def test_precedence_defaults_file_environment_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("grpc:\n  listen: 127.0.0.1:1111\njobs:\n  stop_grace: 2\n")
    env = {"CUMULUS_GRPC_LISTEN": "127.0.0.1:2222", "CUMULUS_CLUSTER_ALLOW_NON_GPU_DEVICES": "yes"}
    settings = load_settings(config, environ=env, overrides={"grpc.listen": "127.0.0.1:3333"})
    assert settings.grpc.listen == "127.0.0.1:3333"
    assert settings.jobs.stop_grace == 2.0
    assert settings.cluster.allow_non_gpu_devices is True


@pytest.mark.parametrize(
    ("yaml_text", "env", "key", "hint"),
    [
        ("grpc:\n  listn: x\n", {}, "grpc.listn", "allowed here: listen, max_concurrent_rpcs, max_message_mb"),
        ("grpc: 5\n", {}, "grpc", "must be a mapping"),
        ("jobs:\n  max_duration: 90000\n", {}, "jobs.max_duration", "allowed 1..86400"),
        ("jobs:\n  stop_grace: .nan\n", {}, "jobs.stop_grace", "finite"),
        ("", {"CUMULUS_JOBS_MAX_PACKAGE_MB": "big"}, "jobs.max_package_mb (from CUMULUS_JOBS_MAX_PACKAGE_MB)", "integer"),
        ("", {"CUMULUS_CLUSTER_IMAGE": "cumulus-worker:latest"}, "cluster.image", "image id"),
        ("logging:\n  level: LOUD\n", {}, "logging.level", "DEBUG, INFO, WARNING, ERROR"),
        ("supervisor_id: Main_1\n", {}, "supervisor_id", "a-z, 0-9"),
        ("- a\n- b\n", {}, "config", "mapping of sections"),
        ("grpc: [\n", {}, "config", "not valid YAML"),
    ],
)
def test_invalid_settings_name_the_key_and_what_is_allowed(tmp_path, yaml_text, env, key, hint):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_settings(config, environ=env)
    assert error.value.key == key
    assert hint in str(error.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_supervisor_id_is_generated_when_empty():
    assert load_settings(environ={}).supervisor_id.startswith("sup-")


@pytest.mark.parametrize(
    ("text", "expected"), [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("[::1]:7", ("::1", 7)), ("localhost:80", ("localhost", 80))]
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":50051", "host:0", "host:70000", "a b:1"])
def test_parse_host_port_rejects(text):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_host_port(text)


def test_default_address_prefers_environment(tmp_path):
    assert default_address({"CUMULUS_ADDRESS": "127.0.0.1:9"}) == "127.0.0.1:9"
    assert default_address({"CUMULUS_LOCAL_STATE": str(tmp_path)}) == "127.0.0.1:50051"
    (tmp_path / "supervisor.json").write_text('{"address": "127.0.0.1:50123"}')
    assert default_address({"CUMULUS_LOCAL_STATE": str(tmp_path)}) == "127.0.0.1:50123"
