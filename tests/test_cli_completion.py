"""``cumulus completion bash|zsh|tcsh``: scripts generated from the argparse parser (shtab). The bash one is
sourced in a real bash and driven the way bash's programmable completion drives it (COMP_WORDS, COMP_CWORD)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cumulus.cli import main

BASH = shutil.which("bash")


def script(capsys, shell: str) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.fixture()
def bash_script(capsys, tmp_path):
    path = tmp_path / "cumulus.bash"
    path.write_text(script(capsys, "bash"))
    return path


DRIVER = r"""
source "$1"; shift
spec=$(complete -p cumulus) || exit 3
fn=${spec#*-F }; fn=${fn%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
"$fn" cumulus "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete(path, *words: str) -> list[str]:
    """What bash offers for the command line ``words`` (the last one is being completed)."""
    proc = subprocess.run([BASH, "--norc", "--noprofile", "-c", DRIVER, "driver", str(path), *words],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


needs_bash = pytest.mark.skipif(BASH is None, reason="no bash")


@needs_bash
def test_bash_script_is_valid(bash_script):
    proc = subprocess.run([BASH, "-n", str(bash_script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@needs_bash
def test_bash_completes_commands(bash_script):
    assert sorted(complete(bash_script, "cumulus", "su")) == ["submit", "supervisor"]
    assert sorted(complete(bash_script, "cumulus", "s")) == ["status", "submit", "supervisor"]
    everything = set(complete(bash_script, "cumulus", ""))
    assert {"submit", "status", "describe", "cancel", "logs", "jobs", "workers", "health", "local", "supervisor",
            "completion"} <= everything
    assert complete(bash_script, "cumulus", "--address", "h:1", "de") == ["describe"]  # after a global flag
    assert sorted(complete(bash_script, "cumulus", "local", "")) == [
        "add-node", "down", "exec", "kill-node", "remove-node", "revive-node", "status", "up"]
    assert sorted(complete(bash_script, "cumulus", "worker", "")) == [
        "activate", "drain", "join-command", "join-tokens", "remove", "revoke-join-token"]
    assert sorted(complete(bash_script, "cumulus", "token", "")) == ["create", "list", "revoke", "rotate"]
    assert sorted(complete(bash_script, "cumulus", "journal", "")) == ["backup", "restore"]


@needs_bash
def test_bash_completes_flags_and_their_values(bash_script):
    assert complete(bash_script, "cumulus", "jobs", "--st") == ["--state"]
    assert "--tail" in complete(bash_script, "cumulus", "logs", "--")
    assert "--output" in complete(bash_script, "cumulus", "describe", "--o")
    assert sorted(complete(bash_script, "cumulus", "jobs", "-o", "")) == ["json", "table"]
    assert complete(bash_script, "cumulus", "jobs", "--state", "RU") == ["RUNNING"]
    assert complete(bash_script, "cumulus", "jobs", "--state", "can") == ["CANCELLED"]
    assert sorted(complete(bash_script, "cumulus", "completion", "")) == ["bash", "tcsh", "zsh"]


@needs_bash
def test_bash_completes_the_job_file(bash_script, tmp_path):
    (tmp_path / "train_job.py").write_text("def f(): pass\n")
    assert complete(bash_script, "cumulus", "submit", str(tmp_path / "train_")) == [str(tmp_path / "train_job.py")]


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef cumulus"), ("tcsh", "complete cumulus")])
def test_zsh_and_tcsh_scripts(capsys, shell, marker):
    text = script(capsys, shell)
    assert marker in text and "submit" in text and "describe" in text


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_zsh_script_is_valid(capsys, tmp_path):
    path = tmp_path / "_cumulus"
    path.write_text(script(capsys, "zsh"))
    proc = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unknown_shell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["completion", "fish-and-chips"])
    assert info.value.code == 2
    assert "bash" in capsys.readouterr().err
