"""mypy over the SDK: strict on ``cumulus/client/`` (the ``[tool.mypy]`` settings of pyproject.toml), and over
two user scripts in ``tests/typing/``: ``sdk_ok.py`` must type-check (``assert_type`` on ``JobRef[T]``,
``.result()``, ``cumulus.get``, ...), ``sdk_errors.py`` must fail with exactly the errors marked in it.

One mypy run (cold cache, a few seconds) serves all three tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "typing"
OK, ERRORS = SCRIPTS / "sdk_ok.py", SCRIPTS / "sdk_errors.py"
LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):(?P<line>\d+): (?P<kind>error|note): (?P<text>.*?)"
                  r"(?:  \[(?P<code>[a-z-]+)\])?$")

pytestmark = pytest.mark.slow

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str | None, str]]]:
    """``{relative path: [(line, code, text), ...]}`` of the errors of one mypy run (configured by pyproject.toml)."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache),
         "--no-error-summary", "--show-error-codes", "--no-pretty", "--no-color-output",
         "cumulus/__init__.py", "cumulus/client", str(OK.relative_to(ROOT)), str(ERRORS.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        pytest.fail(f"mypy did not run (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    report: dict[str, list[tuple[int, str | None, str]]] = {}
    for line in proc.stdout.splitlines():
        match = LINE.match(line)
        if match and match["kind"] == "error":
            report.setdefault(match["path"], []).append((int(match["line"]), match["code"], match["text"]))
        elif not match and line.strip():
            report.setdefault("<unparsed>", []).append((0, None, line))
    return report


def _show(errors: list[tuple[int, str | None, str]]) -> str:
    return "\n".join(f"  {line}: [{code}] {text}" for line, code, text in errors)


def test_client_package_is_strictly_typed(mypy_report):
    problems = {path: errs for path, errs in mypy_report.items() if not path.startswith("tests/")}
    assert not problems, "mypy --strict (pyproject.toml [tool.mypy]) fails on the SDK:\n" + "\n".join(
        f"{path}:\n{_show(errs)}" for path, errs in sorted(problems.items()))


def test_user_script_type_checks(mypy_report):
    errors = mypy_report.get(str(OK.relative_to(ROOT)), [])
    assert not errors, f"{OK.name} should type-check:\n{_show(errors)}"


def test_type_errors_in_user_code_are_reported(mypy_report):
    expected = {(n, m[1]) for n, text in enumerate(ERRORS.read_text().splitlines(), 1)
                if (m := re.search(r"# error: \[([a-z-]+)\]", text))}
    assert len(expected) >= 5
    got = {(line, code) for line, code, _ in mypy_report.get(str(ERRORS.relative_to(ROOT)), [])}
    assert got == expected, (f"{ERRORS.name}: mypy should report exactly the marked errors\n"
                             f"  missing: {sorted(expected - got)}\n  unexpected: {sorted(got - expected)}\n"
                             + _show(mypy_report.get(str(ERRORS.relative_to(ROOT)), [])))
