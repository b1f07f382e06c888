"""The README's module map names every module of the package, once, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "### The module, one line per file"


def module_map(readme: str) -> list[str]:
    """The file names the map lists, in order: one ``- `name.py`: ...`` line per module."""
    if HEADING not in readme:
        raise AssertionError(f"the README has no section {HEADING!r}")
    section = readme.split(HEADING, 1)[1].split("\n#", 1)[0]
    return re.findall(r"^- `([^`]+\.py)`: \S", section, flags=re.MULTILINE)


def test_the_module_map_matches_the_files() -> None:
    listed = module_map((ROOT / "README.md").read_text(encoding="utf-8"))
    package = ROOT / "refcocog_tools"
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(set(files) - set(listed)) == [], "modules missing from the README's map"
    assert sorted(set(listed) - set(files)) == [], "the README's map names files that do not exist"


def test_the_check_sees_a_missing_and_an_extra_module() -> None:
    text = f"{HEADING}\n\n- `a.py`: one.\n- `b.py`: two.\n\n## Next\n- `c.py`: not the map.\n"
    assert module_map(text) == ["a.py", "b.py"]
