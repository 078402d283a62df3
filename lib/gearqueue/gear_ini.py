"""gEAR's own gear.ini, read as ours: its spelling of our section, its other settings left out.

gEAR keeps one gear.ini next to its code (`<gear_root>/gear.ini`, read by gEAR's
`ServerConfig`), with sections for its database, mail, UI and services
(gear.ini.template in IGS/gEAR). An operator who swaps gEAR's projectr consumer for ours
points ours at that file, so it must load as it is:

- `[projectR_service]` (gEAR's spelling) is our `[projectr_service]`;
- gEAR's other sections, and gEAR's keys of that section that are not ours, are
  ignored, and named once in one INFO line;
- every other unknown section or key is still an error, so typos stay caught.

The names are gEAR's, listed here rather than guessed: a section gEAR adds later is
reported as unknown until it is added to this table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import ConfigError

#: gEAR's spelling of a section -> ours.
SECTION_SPELLINGS: Mapping[str, str] = {"projectR_service": "projectr_service"}

#: Sections of gEAR's gear.ini.template (and its docker template) that are gEAR's alone.
GEAR_SECTIONS: tuple[str, ...] = (
    "database", "email_sender", "content", "test", "folders", "history",
    "nemoarchive_import", "uploader_service", "higlass",
)

#: gEAR's keys in a section we share, which mean nothing here (the Cloud Run service
#: URL and switch, and the web API's default for full_output).
GEAR_KEYS: Mapping[str, tuple[str, ...]] = {
    "projectr_service": ("hostname", "cloud_run_enabled", "full_output"),
}

#: Where gEAR keeps its data, relative to the folder of its gear.ini (gEAR's `www/`):
#: the [paths] defaults when a service has contract = gear.
GEAR_PATHS: Mapping[str, str] = {
    "datasets_dir": "www/datasets",
    "carts_dir": "www/carts",
    "projections_dir": "www/projections",
}


def fold_sections(sections: Iterable[tuple[str, dict[str, str]]], *, path: str
                  ) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(our section name -> its keys, gEAR's settings left out, for the INFO line).

    Sections not in `known` are left for the caller to reject; this only renames
    gEAR's spelling and drops gEAR's own sections and keys.
    """
    folded: dict[str, dict[str, str]] = {}
    spelled: dict[str, str] = {}
    ignored: list[str] = []
    for name, items in sections:
        if name in GEAR_SECTIONS:
            ignored.append(f"[{name}]")
            continue
        ours = SECTION_SPELLINGS.get(name, name)
        if ours in folded:
            raise ConfigError(f"section given twice, as [{spelled[ours]}] and [{name}]; "
                              f"keep one", path=path, section=name)
        spelled[ours] = name
        gear_keys = [key for key in GEAR_KEYS.get(ours, ()) if key in items]
        if gear_keys:
            ignored.append(f"[{name}] {', '.join(gear_keys)}")
        folded[ours] = {key: value for key, value in items.items() if key not in gear_keys}
    return folded, ignored
