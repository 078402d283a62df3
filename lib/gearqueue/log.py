"""One logger tree ("gearqueue.*"), structured fields, journald under systemd.

Fields are passed as `extra=fields(job_id=..., outcome=...)`, which become journald
fields GEAR_JOB_ID, GEAR_OUTCOME, ... (prefixed so they never collide with systemd's own
JOB_ID/JOB_TYPE). Outside systemd the same fields are appended as key=value to plain
stderr lines.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

FIELD_PREFIX = "GEAR_"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: job_id=... becomes GEAR_JOB_ID=...; None values are dropped."""
    return {f"{FIELD_PREFIX}{name.upper()}": value for name, value in values.items()
            if value is not None}


class FieldsFormatter(logging.Formatter):
    """Plain stderr lines: time, level, logger, message, then the GEAR_* fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{key[len(FIELD_PREFIX):].lower()}={value}"
                         for key, value in record.__dict__.items()
                         if key.startswith(FIELD_PREFIX))
        return f"{line} [{extra}]" if extra else line


def under_journald() -> bool:
    """True when stderr is connected to journald (systemd sets $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def setup_logging(identifier: str, level: str | int = "INFO") -> None:
    """Configure the root logger once per process: journald or stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if under_journald():
        from systemd.journal import JournalHandler  # needs systemd-python

        handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(FieldsFormatter(
            "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("GEAR_LOG_LEVEL", level))
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("rpy2").setLevel(logging.WARNING)  # its start-up chatter is INFO
