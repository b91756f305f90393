"""The docs hold together: a short README that maps every page, a nav that lists them, and no stale path."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))

FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# A repository path such as sbr_bench/cli/run.py or conf/defense/sbr.yaml; placeholders (<name>, *) do not match.
REPO_PATH = re.compile(r"(?<![\w./~-])((?:sbr_bench|benchmarks|tests)/[\w./-]+\.py|conf/[\w./-]+\.yaml)\b")
# Files the user writes for their own machine (git-ignored), named in the docs but never in the repository.
USER_FILES = ("conf/local/",)


def nav_pages(entries) -> list[str]:
    """Every page named in mkdocs.yml's nav, however deeply nested."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_readme_fits_on_two_screens():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 100, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    missing = [page for page in PAGES if f"](docs/{page})" not in text]
    assert not missing, f"README.md's documentation map lacks: {missing}"


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    nav = nav_pages(config["nav"])
    assert sorted(set(PAGES) - set(nav)) == [], "pages missing from mkdocs.yml's nav"
    assert [page for page in nav if not (DOCS / page).is_file()] == [], "nav entries without a page"


def test_every_path_the_docs_name_exists():
    stale = []
    for doc in [README, *(DOCS / page for page in PAGES)]:
        text = FENCED_BLOCK.sub("", doc.read_text(encoding="utf-8"))
        for code in INLINE_CODE.findall(text):
            for path in REPO_PATH.findall(code):
                if not path.startswith(USER_FILES) and not (ROOT / path).exists():
                    stale.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not stale, stale
