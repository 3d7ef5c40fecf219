"""Runtime environments on the real local cluster (issue 17), through a REAL ``cumulus supervisor`` process
(``supervisor_process.remote_supervisor``) and the SDK or the CLI: a helper module imported from another directory on
``sys.path`` than the job's script, a data file (``files=``), a ``working_dir`` whose module the job imports by name
at run time, and ``cumulus submit --files --py-module``. Each job returns what only works when its code or data
reached the worker; after each, nothing of the job is left.

Module names start with ``rtc_`` (tests/cluster has a ``helpers`` module of its own on ``sys.path``).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor_process import remote_supervisor  # noqa: F401  (the module-scoped fixture)

JOB_TIMEOUT = 120.0
GPU = 0.25


@pytest.fixture
def sup(remote_supervisor):  # noqa: F811
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


@pytest.fixture
def fresh_modules():
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run_job(sup, func, *args, **options):
    """Submit ``func(*args)`` with ``options`` through the SDK; its value once COMPLETED, with nothing left."""
    with sup.client() as client:
        ref = client.submit_call(func, args, gpu=GPU, **options)
        value = ref.result(JOB_TIMEOUT)
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "COMPLETED"})
    return value


# ---- (a) a helper module from another directory on sys.path ------------------------------------------------------


def test_helper_module_from_another_directory_with_a_class(sup, tmp_path, monkeypatch, fresh_modules):
    script, lib = tmp_path / "scripts", tmp_path / "elsewhere" / "src"
    write(lib / "rtc_helpers.py", """
        class Stats:
            def __init__(self, values):
                self.values = list(values)

            def mean(self):
                return sum(self.values) / len(self.values)

            def describe(self):
                return f"n={len(self.values)} mean={self.mean():.1f}"

        def squares(n):
            return [i * i for i in range(n)]
    """)
    write(script / "rtc_script.py", """
        import importlib

        import rtc_helpers

        def job(n):
            stats = rtc_helpers.Stats(rtc_helpers.squares(n))
            # the helper's source was shipped too: importing it by name at run time works on the worker
            again = importlib.import_module("rtc_helpers")
            return stats.describe(), again.squares(3), stats
    """)
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.syspath_prepend(str(script))
    fresh_modules += ["rtc_helpers", "rtc_script"]
    script_mod = importlib.import_module("rtc_script")

    described, squares, stats = run_job(sup, script_mod.job, 5)
    assert described == "n=5 mean=6.0"
    assert squares == [0, 1, 4]
    assert type(stats).__name__ == "Stats" and stats.values == [0, 1, 4, 9, 16] and stats.mean() == 6.0


# ---- (b) a data file ------------------------------------------------------------------------------------------------


def reads_data_json():
    with open("data.json") as f:  # by its relative path: the job's working directory holds it
        return json.load(f)


def test_data_file_read_by_relative_path(sup, tmp_path, monkeypatch):
    content = {"name": "rtc", "weights": [0.25, 0.5], "nested": {"ok": True}}
    (tmp_path / "data.json").write_text(json.dumps(content))
    monkeypatch.chdir(tmp_path)
    assert run_job(sup, reads_data_json, files=["data.json"]) == content


# ---- (c) working_dir with a module imported by name at run time --------------------------------------------------


def uses_its_working_dir():
    import importlib
    import os

    module = importlib.import_module("rtc_wd_module")  # never imported on the client: only working_dir has it
    with open(os.path.join("conf", "factor.txt")) as f:
        factor = int(f.read())
    return module.compute(factor), sorted(name for name in os.listdir(".") if name != "__pycache__")


def test_working_dir_module_imported_at_run_time(sup, tmp_path, monkeypatch):
    wd = tmp_path / "project"
    write(wd / "rtc_wd_module.py", """
        def compute(factor):
            return {"product": factor * 6, "from": __name__}
    """)
    write(wd / "conf" / "factor.txt", "7")
    write(wd / ".git" / "HEAD", "ref: refs/heads/main\n")  # never shipped
    monkeypatch.chdir(tmp_path)
    assert "rtc_wd_module" not in sys.modules
    value, listing = run_job(sup, uses_its_working_dir, working_dir="project")
    assert value == {"product": 42, "from": "rtc_wd_module"}
    assert listing == ["conf", "rtc_wd_module.py"]


# ---- (d) cumulus submit --files --py-module -------------------------------------------------------------------------


def test_cli_submit_with_files_and_py_module(sup, tmp_path):
    jobfile = write(tmp_path / "job" / "rtc_cli_job.py", """
        import json

        def read_data():
            import rtc_cli_tool  # shipped with --py-module: imported by name on the worker

            with open("rtc_cli_data.json") as f:
                return rtc_cli_tool.scale(json.load(f)["value"])
    """)
    data = write(tmp_path / "data" / "rtc_cli_data.json", '{"value": 617}')
    tool = write(tmp_path / "tools" / "rtc_cli_tool.py", """
        def scale(v):
            return v * 2
    """)
    # The CLI runs in the repository: the data file is outside its current directory and lands under its name.
    res = sup.cli("submit", f"{jobfile}:read_data", "--files", str(data), "--py-module", str(tool),
                  "--gpu", str(GPU), check_rc=0)
    assert res.stdout.strip().splitlines()[-1] == "1234", res.stdout
    submitted = re.search(r"job (\S+) submitted to (\S+)", res.stderr)
    assert submitted and submitted.group(2) == sup.address, res.stderr
    job_id = submitted.group(1)
    sup.assert_nothing_left([job_id], expect={job_id: "COMPLETED"})
