"""Every full-config YAML recipe in the manual passes `suki-relay check` as written.

A fenced ``yaml`` block whose first line is ``# actions.yaml`` is a whole config file; the
test writes it as actions.yaml, sets each ``${VAR}`` it names (without a default) to a
dummy, makes the templates folder it names and the signing keys (``private_key_file``) with
`suki-relay keys new`, and runs `check` on it: a recipe cannot rot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARK = "# actions.yaml"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR}: ${VAR:-default} needs none


def full_configs() -> list[tuple[str, str]]:
    """(page:line, text) of every full-config block in the manual."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            if m.group(1).startswith(MARK):
                line = text.count("\n", 0, m.start()) + 1
                found.append((f"{page.relative_to(DOCS)}:{line}", m.group(1)))
    return found


CONFIGS = full_configs()


def test_the_manual_has_full_configs_to_check() -> None:
    pages = {where.split(":")[0] for where, _ in CONFIGS}
    assert {"configuration.md", "recipes/application.md", "recipes/ehr.md",
            "recipes/database.md"} <= pages


@pytest.mark.parametrize(("where", "text"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_every_full_config_in_the_manual_passes_check(tmp_path: Path, where: str, text: str) -> None:
    (tmp_path / "actions.yaml").write_text(text)
    folder = re.search(r"^templates: *([^\s#]+)", text, re.M)
    if folder:
        (tmp_path / folder.group(1)).mkdir(parents=True)
    for key in sorted(set(re.findall(r"^ *private_key_file: *([^\s#]+)", text, re.M))):
        made = run_cli("keys", "new", key, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    env = {name: f"dummy-{name.lower()}" for name in _VAR.findall(text)}
    result = run_cli("check", cwd=tmp_path, env=env)
    assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"


def test_a_rotten_recipe_fails(tmp_path: Path) -> None:
    """The same test on a recipe with a misspelt option fails, naming it."""
    where, text = next(c for c in CONFIGS if c[0].startswith("recipes/application.md"))
    (tmp_path / "actions.yaml").write_text(text.replace("fetch: [contents]", "fetch: [contnets]"))
    env = {name: "dummy" for name in _VAR.findall(text)}
    result = run_cli("check", cwd=tmp_path, env=env)
    assert result.returncode == 1 and "contnets" in result.stdout + result.stderr, where
