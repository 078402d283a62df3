"""Soft, hard and memory limits and recycling: one policy for the executor child.

The consumer loop reads what it can see of the child (how long the current job has
run, the child's RSS, how many jobs it has done) and asks this policy what to do:

- while a job runs (`during_job`): nothing, signal the soft limit (SIGUSR1, once per
  job; the child raises SoftTimeLimitExceeded inside the job), or kill the child for
  a reason, with the error to record for the job (`time_limit`; RSS above twice
  `max_memory_mb`);
- between batches (`recycling`): replace the child, and why (`max_jobs_per_child`
  reached; RSS above `max_memory_mb`);
- ahead of recycling (`successor_due`): start the next child now, so the swap does
  not wait for an interpreter and its libraries (R: most of a second);
- how many more jobs the child takes before it is due (`allowance`).

It decides only; the loop and the executor act.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ServiceSettings
from ..errors import HardTimeLimitExceeded, MemoryLimitExceeded


@dataclass(frozen=True)
class SignalSoftLimit:
    """Tell the job it is past soft_time_limit (the executor sends it once per job)."""


@dataclass(frozen=True)
class Kill:
    """Kill the child now; the job it runs failed with `error`."""

    error: HardTimeLimitExceeded | MemoryLimitExceeded


@dataclass(frozen=True)
class Recycle:
    """Replace the child before the next batch."""

    reason: str


class Limits:
    def __init__(self, service: ServiceSettings) -> None:
        self.service = service

    @property
    def watches_memory(self) -> bool:
        """Whether the child's RSS matters (reading it costs a /proc read)."""
        return self.service.max_memory_mb > 0

    def during_job(self, elapsed: float, rss_mb: float) -> SignalSoftLimit | Kill | None:
        """What to do about the job that has run `elapsed` s in a child of `rss_mb` MiB."""
        service = self.service
        if service.time_limit and elapsed > service.time_limit:
            return Kill(HardTimeLimitExceeded(
                f"job ran past time_limit ({service.time_limit:g} s) and was killed"))
        if rss_mb > 2 * service.max_memory_mb > 0:
            return Kill(MemoryLimitExceeded(
                f"executor RSS {rss_mb:.0f} MiB passed twice max_memory_mb "
                f"({service.max_memory_mb} MiB) and it was killed"))
        if service.soft_time_limit and elapsed > service.soft_time_limit:
            return SignalSoftLimit()
        return None

    def recycling(self, jobs_done: int, rss_mb: float) -> Recycle | None:
        """Whether the child should be replaced before the next batch, and why."""
        limit = self.service.max_jobs_per_child
        if limit and jobs_done >= limit:
            return Recycle(f"{jobs_done} jobs done (max_jobs_per_child)")
        if rss_mb > self.service.max_memory_mb > 0:
            return Recycle(f"RSS {rss_mb:.0f} MiB over max_memory_mb")
        return None

    def successor_due(self, jobs_done: int) -> bool:
        """Whether to start the child that replaces this one at max_jobs_per_child: two
        batches before (one running, one started early), or 10% of it if more.
        Recycling for memory cannot be foreseen and starts the new child then."""
        limit = self.service.max_jobs_per_child
        return bool(limit) and jobs_done >= limit - max(limit // 10,
                                                        2 * self.service.jobs_per_batch)

    def allowance(self, jobs_done: int) -> int:
        """How many more jobs the child takes before it is due for recycling (>= 1)."""
        limit = self.service.max_jobs_per_child
        return max(limit - jobs_done, 1) if limit else 1 << 30
