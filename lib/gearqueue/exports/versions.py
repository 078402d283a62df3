"""Software versions an export records, so a figure can be traced to what made it.

Python packages are read from their installed metadata. R and limma are asked of
Rscript (no R is started in the worker): ProjectR's R engine runs on that R, and limma
is the reference its numbers are checked against. Where a program or package is not
installed, its version is null.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess

PACKAGES = ("gearqueue", "numpy", "h5py", "scipy", "matplotlib")
R_QUERY = ('cat(paste(R.version$major, R.version$minor, sep = "."), '
           'tryCatch(as.character(utils::packageVersion("limma")), error = function(e) ""), '
           'sep = "\\n")')
R_TIMEOUT = 30.0


def software_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions.update(r_versions())
    return versions


def r_versions() -> dict[str, str | None]:
    try:
        done = subprocess.run(["Rscript", "--vanilla", "-e", R_QUERY], capture_output=True,
                              text=True, timeout=R_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {"R": None, "limma": None}
    lines = done.stdout.splitlines() if done.returncode == 0 else []
    r_version = lines[0].strip() if lines else ""
    limma = lines[1].strip() if len(lines) > 1 else ""
    return {"R": r_version or None, "limma": limma or None}
