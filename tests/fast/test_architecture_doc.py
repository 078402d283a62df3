"""docs/architecture.md's module table names every module of lib/gearqueue.

The table is how a newcomer finds where a decision lives; a module missing from it is
a module nobody is told about.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lib" / "gearqueue"


def _modules_in_table() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Modules"):]
    named: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            named.update(re.findall(r"`([\w/]+\.(?:py|R))`", first_cell))
    return named


def test_every_module_of_the_library_is_in_the_architecture_table() -> None:
    modules = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
               if path.name != "__init__.py" or path.parent != PACKAGE}
    missing = sorted(modules - _modules_in_table())
    assert not missing, f"docs/architecture.md's module table lacks: {', '.join(missing)}"


def test_the_table_names_no_module_that_does_not_exist() -> None:
    gone = sorted(name for name in _modules_in_table() if not (PACKAGE / name).exists())
    assert not gone, f"docs/architecture.md's module table names missing files: {gone}"
