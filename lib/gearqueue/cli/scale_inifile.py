"""Set one key of gear.ini in place, keeping the operator's comments and layout.

`gearqueue scale TYPE N` records N as the type's `workers`, because gear.ini is what
the target applies each time it (re)starts. configparser would drop every comment of
the fully commented example, so this edits the text: the active `key =` line of the
section is replaced; else the line goes under the commented-out default (`; key = ...`)
or the section header; a missing section is appended. The file is replaced atomically
with its mode and owner kept (gear.ini is root:gear 0640).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")


def set_value(path: Path, section: str, key: str, value: str) -> None:
    """Make `key = value` the active setting of `[section]` in the ini file at `path`."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    new_line = f"{key} = {value}\n"
    active = re.compile(rf"^\s*{re.escape(key)}\s*[=:]")
    commented = re.compile(rf"^\s*[;#]\s*{re.escape(key)}\s*[=:]")
    start = next((i for i, line in enumerate(lines)
                  if (m := _HEADER.match(line)) and m["name"].strip() == section), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", f"[{section}]\n", new_line]
    else:
        end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])),
                   len(lines))
        body = range(start + 1, end)
        found = next((i for i in body if active.match(lines[i])), None)
        if found is not None:
            lines[found] = new_line
        else:
            anchor = next((i for i in body if commented.match(lines[i])), start)
            lines.insert(anchor + 1, new_line)
    _replace(path, "".join(lines))


def _replace(path: Path, text: str) -> None:
    stat = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, stat.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temporary, stat.st_uid, stat.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
