"""`gearqueue doctor`'s checks (checks.diagnose) and what they report (findings)."""

from .checks import diagnose
from .findings import Finding, Level

__all__ = ["Finding", "Level", "diagnose"]
