"""The ``cumulus`` command line without a supervisor: global flags before or after the command, repeatable
flags, usage errors (exit 2 with a message saying what to fix), and a client-only install (no server modules)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cumulus.cli import build_parser, main
from cumulus.client.cli_flags import apply_defaults

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str):
    return apply_defaults(build_parser().parse_args(list(argv)))


def usage_error(capsys, *argv: str) -> str:
    """Run ``cumulus ARGV``, expecting a usage error: exit status 2; returns stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--address", "h:1", "jobs"], ["jobs", "--address", "h:1"], ["--address", "x:9", "jobs", "--address", "h:1"],
])
def test_address_before_or_after_the_command_the_later_wins(argv):
    assert parse(*argv).address == "h:1"


@pytest.mark.parametrize("argv, output", [
    (["jobs"], "table"), (["-o", "json", "jobs"], "json"), (["jobs", "-o", "json"], "json"),
    (["--json", "jobs"], "json"), (["jobs", "--json"], "json"), (["--output", "json", "status", "J"], "json"),
    (["-o", "json", "jobs", "-o", "table"], "table"), (["-o", "json", "local", "status"], "json"),
    (["local", "status", "-o", "json"], "json"), (["local", "status", "--json"], "json"),
])
def test_output_before_or_after_the_command(argv, output):
    assert parse(*argv).output == output


def test_defaults_and_verbose_anywhere():
    args = parse("workers")
    assert (args.address, args.output, args.verbose) == (None, "table", 0)
    assert parse("-vv", "workers").verbose == 2
    assert parse("workers", "-vv").verbose == 2
    assert parse("supervisor", "-v").verbose == 1
    assert parse("-v", "local", "up", "-vv").verbose == 2  # the later one wins


@pytest.mark.parametrize("command", [
    ["status", "J"], ["describe", "J"], ["jobs"], ["workers"], ["health"], ["submit", "f.py:g"], ["cancel", "J"],
    ["local", "status"],
])
def test_every_data_command_takes_output_json(command):
    assert parse(*command, "-o", "json").output == "json"
    assert parse(*command, "--json").output == "json"


def test_bad_output_format_is_a_usage_error(capsys):
    err = usage_error(capsys, "jobs", "-o", "yaml")
    assert "invalid choice: 'yaml'" in err and "json" in err


def test_requirements_repeat_like_arg_and_env():
    args = parse("submit", "f.py:g", "--requirements", "numpy", "--requirements", "torch>=2", "--arg", "1",
                 "--arg", "2", "--env", "A=1", "--env", "B=2")
    assert args.requirements == ["numpy", "torch>=2"]
    assert args.arg == ["1", "2"] and args.env == ["A=1", "B=2"]
    args = parse("submit", "--requirements", "numpy", "f.py:g")  # the positional after it is not eaten
    assert args.target == "f.py:g" and args.requirements == ["numpy"]


@pytest.mark.parametrize("argv", [
    ["submit", "f.py:g", "--requirements", "numpy", "torch"],
    ["submit", "--requirements", "numpy", "torch", "f.py:g"],
])
def test_several_requirements_after_one_flag_fail_clearly(capsys, argv):
    err = usage_error(capsys, *argv)
    assert "unrecognized arguments" in err and "--requirements numpy --requirements torch" in err
    assert "usage: cumulus submit" in err


def test_job_states_repeatable_comma_separated_any_case():
    assert parse("jobs", "--state", "running").state == ["RUNNING"]
    assert parse("jobs", "--state", "Queued,running", "--state", "FAILED").state == ["QUEUED", "RUNNING", "FAILED"]
    assert parse("jobs", "--state", "creating-partition").state == ["CREATING_PARTITION"]


def test_job_states_are_the_protocols():
    from cumulus.client.cli import JOB_STATES
    from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

    assert list(JOB_STATES) == [name for name in pb.JobState.keys() if name != "JOB_STATE_UNSPECIFIED"]


@pytest.mark.parametrize("value", ["runing", "RUNNING,nope", ","])
def test_unknown_state_is_a_usage_error_listing_the_valid_ones(capsys, value):
    err = usage_error(capsys, "jobs", "--state", value)
    assert "--state" in err and "QUEUED" in err and "CANCELLED" in err and "CREATING_PARTITION" in err


@pytest.mark.parametrize("argv, says", [
    (["jobs", "--limit", "-1"], "--limit -1"),
    (["logs", "J", "--tail", "-3"], "--tail -3"),
    (["submit", "nofile.py"], "FILE.py:FUNC"),
    (["submit", "no/such/file.py:f"], "no such file"),
])
def test_commands_own_usage_errors_exit_2(capsys, argv, says):
    code = main([*argv, "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "error:" in err, err


def test_bad_kwarg_and_arg_exit_2(capsys, tmp_path):
    job = tmp_path / "job.py"
    job.write_text("def f(a=0):\n    return a\n")
    assert main(["submit", f"{job}:f", "--kwarg", "a3", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cumulus submit: error: --kwarg 'a3': use NAME=VALUE" in err  # argparse's form
    assert "cumulus submit --help" in err
    assert main(["submit", f"{job}:f", "--kwarg", "a={x", "--address", "127.0.0.1:1"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["submit", f"{job}:f", "--env", "=1", "--address", "127.0.0.1:1"]) == 2
    assert "use NAME=VALUE" in capsys.readouterr().err


def test_unknown_flag_shows_the_commands_usage(capsys):
    err = usage_error(capsys, "jobs", "--bogus")
    assert "usage: cumulus jobs" in err and "unrecognized arguments: --bogus" in err


# ---- a client-only install: no docker, asyncssh, trio_asyncio, cryptography -------------------------------------------

CLIENT_ONLY = textwrap.dedent("""
    import json, sys
    for name in ("docker", "asyncssh", "trio_asyncio", "cryptography"):
        sys.modules[name] = None  # what `import name` finds when the package is not installed
    from cumulus.cli import main
    argv = json.loads(sys.argv[1])
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    server = sorted(m for m in sys.modules if m.split(".")[0] in ("docker", "asyncssh", "trio_asyncio", "cryptography")
                    and sys.modules[m] is not None)
    server += sorted(m for m in ("cumulus.app", "cumulus.process", "cumulus.supervisor", "cumulus.local.cluster")
                     if m in sys.modules)
    print("SERVER-MODULES:", json.dumps(server))
    sys.exit(code)
""")


def client_only(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLIENT_ONLY, json.dumps(list(argv))], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def test_help_and_completion_on_a_client_only_install():
    for argv in (["--help"], ["submit", "--help"], ["local", "--help"], ["completion", "bash"]):
        proc = client_only(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "SERVER-MODULES: []" in proc.stdout, (argv, proc.stdout[-300:])
        assert "Traceback" not in proc.stderr


def test_job_commands_on_a_client_only_install():
    from tests.fakes.fake_api import free_port

    proc = client_only("jobs", "--address", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and "no Cumulus supervisor reachable" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "SERVER-MODULES: []" in proc.stdout


# Read-only commands only: were the guard broken, `local up`/`down` would really change this machine's cluster.
@pytest.mark.parametrize("argv", [["supervisor", "--listen", "127.0.0.1:1"], ["local", "status"]])
def test_server_commands_on_a_client_only_install_say_what_to_install(argv):
    proc = client_only(*argv)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'cumulus[server]'" in proc.stderr and "Traceback" not in proc.stderr
    assert "SERVER-MODULES: []" in proc.stdout
