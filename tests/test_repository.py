"""The repository stands on its own: no file points a reader to notes that are not in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Names of notes kept outside the repository while it was built; a reader has none of them.
OUTSIDE = re.compile(r"\.\./shared|hft-methods|stack[- ]notes|style-anchors|design\.md", re.IGNORECASE)


def test_no_file_refers_to_notes_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if name.startswith(".ci/") or name == Path(__file__).relative_to(ROOT).as_posix() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, found


def test_no_test_file_imports_another():
    """Shared test code lives in tests/helpers.py or a stand-in module, so each test file runs alone."""
    importing = re.compile(r"^\s*(from|import)\s+test_\w+", re.MULTILINE)
    found = [p.name for p in (ROOT / "tests").glob("*.py") if importing.search(p.read_text(encoding="utf-8"))]
    assert not found, found
