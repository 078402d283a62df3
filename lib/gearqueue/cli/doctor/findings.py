"""What `gearqueue doctor` prints: findings, which need fixing, and informational lines.

A *finding* (level `fail`) is something that is wrong now or makes jobs fail, and
always carries its fix: the command to run or the gear.ini line to change. Any finding
makes doctor exit non-zero. `ok` (a check passed) and `info` (context, or a check that
could not be made here, with the reason) are informational and never change the exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Level(str, Enum):
    OK = "ok"
    INFO = "info"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    message: str
    #: What to do about it; never empty for a finding (FAIL).
    fix: str = ""

    def __post_init__(self) -> None:
        if self.level is Level.FAIL and not self.fix:
            raise ValueError(f"a doctor finding needs a fix: {self.subject}: {self.message}")

    @property
    def is_finding(self) -> bool:
        return self.level is Level.FAIL


def ok(subject: str, message: str) -> Finding:
    return Finding(Level.OK, subject, message)


def info(subject: str, message: str) -> Finding:
    return Finding(Level.INFO, subject, message)


def fail(subject: str, message: str, fix: str) -> Finding:
    return Finding(Level.FAIL, subject, message, fix)
