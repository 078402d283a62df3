"""Run by `gearqueue doctor` as a script, in a child started as the executor would be
(the consumer's python and environment): load rpy2, start R, load limma and nnls, and
start ProjectR's R engine as the executor child does. One JSON line per step on stdout,
flushed, so a step that kills the process (an R fatal error) is still told by the ones
before it and by the exit status. Standard library and rpy2 only at the top: the
python asked may have another gearqueue, or none.
"""

from __future__ import annotations

import json
import sys

PACKAGES = ("limma", "nnls")


def report(step: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"step": step, "ok": ok, "detail": detail}), flush=True)


def main() -> int:
    try:
        import rpy2.rinterface as ri
    except Exception as error:  # noqa: BLE001 - what failed is the report
        report("rpy2", False, f"{type(error).__name__}: {error}")
        return 1
    report("rpy2", True, f"rpy2 from {ri.__file__}")
    report("R-starting", True)
    try:
        ri.initr_simple()
    except Exception as error:  # noqa: BLE001
        report("R", False, f"{type(error).__name__}: {error}")
        return 1
    report("R", True, str(ri.baseenv["R.version.string"][0]))
    failed = False
    for package in PACKAGES:
        loaded = ri.baseenv["requireNamespace"](ri.StrSexpVector([package]),
                                               quietly=ri.BoolSexpVector([True]))
        report(package, bool(loaded[0]))
        failed |= not loaded[0]
    try:
        from gearqueue.projectr.r_engine import REngine
    except ImportError as error:
        report("engine", False, f"gearqueue's R engine cannot be imported: {error}")
        return 1
    try:
        REngine().start()
    except Exception as error:  # noqa: BLE001
        report("engine", False, f"{type(error).__name__}: {error}")
        return 1
    report("engine", True, "ProjectR's R engine started (projectr.R loaded)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
