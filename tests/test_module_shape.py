"""Every product module (``cumulus/``, ``worker_image/``) says in its docstring what it owns and stays small
(about 400 lines at most), so each can be read whole. Generated code (``cumulus/rpc/generated``) is exempt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cumulus

ROOT = Path(cumulus.__file__).parent
MAX_LINES = 400
MODULES = sorted(p for base in (ROOT, ROOT.parent / "worker_image") for p in base.rglob("*.py")
                 if "generated" not in p.parts)


def test_there_are_modules_to_check():
    assert len(MODULES) > 60 and ROOT / "actors" / "scheduler.py" in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_module_is_small_and_says_what_it_owns(path: Path):
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines: split it along a seam"
    if path.name != "__init__.py" or text.strip():
        assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT.parent)} has no module docstring"


def test_test_modules_have_unique_names():
    """pytest imports test files by basename (no packages): two files of one name break the collection of both."""
    from collections import Counter

    tests = Path(__file__).resolve().parent
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
