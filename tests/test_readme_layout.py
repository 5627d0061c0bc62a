"""The README's project layout names every module and subpackage of sleb, and nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Project layout", 1)[1]
    return section.split("```", 2)[1]


def test_layout_tree_matches_the_package():
    names = set()
    for line in _layout_block().splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # an entry under sleb/, not a continued comment
            names.update(re.findall(r"[A-Za-z_]+(?:\.py|/)", line.split("   ")[0]))
    package = {p.name for p in (ROOT / "sleb").glob("*.py") if p.name != "__init__.py"}
    package |= {p.name + "/" for p in (ROOT / "sleb").iterdir() if (p / "__init__.py").is_file()}
    assert package - names == set(), "missing from the README's layout"
    assert names - package == set(), "in the README's layout but not in sleb/"
    ignored = {"pruned", "build", "dist", "out", "__pycache__"}  # outputs the .gitignore keeps out of the repository
    top = {p.name + "/" for p in ROOT.iterdir()
           if p.is_dir() and not p.name.startswith(".") and p.name not in ignored and not p.name.endswith(".egg-info")}
    listed = set(re.findall(r"^([a-z]+/)", _layout_block(), re.M))
    assert top - listed == set(), "top-level folders missing from the README's layout"
