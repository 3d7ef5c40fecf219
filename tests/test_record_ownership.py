"""A job's record is written by its JobActor only (and built from a journal row by the journal, before any actor
holds it). Checked over the source: a write is a call of one of JobRecord's writing methods, or an assignment to
an attribute of something named ``record``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import cumulus
from cumulus.jobs import JobRecord

ROOT = Path(cumulus.__file__).parent
#: The JobActor and the parts that run in its tasks; the record's own module; the journal's row -> record.
WRITERS = {"actors/job.py", "actors/attempt.py", "actors/result_fetch.py", "actors/adoption.py",
           "actors/checkpoint_step.py", "actors/log_relay.py", "actors/requirements_step.py", "actors/instance_calls.py",
           "jobs.py", "journal_rows.py"}
READ_METHODS = {"events", "__init__"}
WRITE_METHODS = {name for name, _ in inspect.getmembers(JobRecord, inspect.isfunction)
                 if not name.startswith("_") and name not in READ_METHODS}


def writes_in(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITE_METHODS
                and "record" in ast.unparse(node.func.value)):
            found.append((node.lineno, ast.unparse(node.func)))
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    targets.extend(target.elts)
                    continue
                if isinstance(target, ast.Subscript):  # record.x[k] = ...: a write to record.x
                    target = target.value
                if isinstance(target, ast.Attribute) and ast.unparse(target.value).split(".")[-1] == "record":
                    found.append((node.lineno, ast.unparse(target)))
    return sorted(found)


def test_the_write_methods_are_known():
    assert {"set_state", "add_log", "set_torn_down", "set_queue_position"} <= WRITE_METHODS


def test_the_checker_finds_writes():
    sample = "record.set_state(x)\nself.record.attempt += 1\nrecord.reason = 'x'\nrecord.events()\n"
    assert [line for line, _ in writes_in(sample)] == [1, 2, 3]


def test_only_the_job_actor_writes_a_record():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in WRITERS or relative.startswith("rpc/generated/"):
            continue
        offenders += [f"cumulus/{relative}:{line}: {what}" for line, what in writes_in(path.read_text())]
    assert not offenders, "a JobRecord is written outside its JobActor:\n" + "\n".join(offenders)
