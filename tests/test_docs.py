"""The manual in docs/: it builds with `mkdocs build --strict` (a broken link, a missing
anchor or a page left out of the nav fails), and the README's links lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def need_mkdocs() -> None:
    """Skip without the docs extra; under CI (which installs it) fail instead."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the docs extra is not installed: {exc}")
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_manual_builds_strict_clean(tmp_path: Path) -> None:
    need_mkdocs()
    result = build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "actions" / "http" / "index.html").exists()


BREAKAGES = {  # what is added to getting-started.md (or a new page), and what the build names
    "a broken link": ("\nSee [the missing page](missing.md).\n", "missing.md"),
    "a page left out of the nav": (None, "orphan.md"),
    "a reference to an unknown action type": ("\n<!-- reference: action nope -->\n", "nope"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manual_fails_the_build(tmp_path: Path, breakage: str) -> None:
    need_mkdocs()
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copy(REPO / "mkdocs_hooks.py", tmp_path / "mkdocs_hooks.py")
    added, named = BREAKAGES[breakage]
    if added is None:
        (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    else:
        page = tmp_path / "docs" / "getting-started.md"
        page.write_text(page.read_text() + added)
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


def test_every_page_of_the_manual_is_in_the_nav() -> None:
    """Without mkdocs too: each docs/ page is named in mkdocs.yml."""
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md"))
    assert pages
    assert [p for p in pages if f" {p}" not in nav] == []


def test_the_readme_links_lead_somewhere() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "the README stays short: the manual is in docs/"
    targets = re.findall(r"\]\(((?!https?:)[^)#\s]+)", readme)
    assert "docs/index.md" in targets
    assert [t for t in targets if not (REPO / t).exists()] == []
    assert "mkdocs serve" in readme
