"""When to spill: the process's RSS plus a planned accumulator against a memory limit."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from histoflow.errors import HistoflowError
from histoflow.io.atomic import make_job_dir
from histoflow.io.space import require_free_space

MB = 1024 * 1024

log = logging.getLogger(__name__)


@dataclass
class SpillDecision:
    """Whether to spill, and why (for the log)."""

    spill: bool
    reason: str


class MemoryPolicy:
    """Limit = `percent` % of the RAM available when the job starts, lowered to `cap_mb`
    when given. `percent=0` forces spilling (tests, benchmarks). Once spilled, the policy
    stays spilled: memory pressure that made one band spill will make the next one spill
    too, and flip-flopping would only fill the log."""

    def __init__(self, percent: float = 50.0, cap_mb: float | None = None, process=None):
        if not 0 <= percent <= 100:
            raise ValueError(f"memory percent must be within 0-100, got {percent}")
        self.percent = float(percent)
        self.cap_mb = None if cap_mb is None else float(cap_mb)
        self.available = psutil.virtual_memory().available
        limit = self.available * self.percent / 100.0
        if self.cap_mb is not None:
            limit = min(limit, self.cap_mb * MB)
        self.limit = int(limit)
        self.process = process or psutil.Process()
        self.spilling = False

    def describe(self) -> str:
        """The limit and how it was derived, for the log."""
        cap = "none" if self.cap_mb is None else f"{self.cap_mb:.0f} MB"
        return (
            f"limit {self.limit / MB:.0f} MB = min({self.percent:g}% of "
            f"{self.available / MB:.0f} MB available, cap {cap})"
        )

    def decide(self, nbytes: int) -> SpillDecision:
        """Whether an accumulator of `nbytes` must go to disk."""
        if self.spilling:
            return SpillDecision(True, "already spilling")
        rss = self.process.memory_info().rss
        if rss + nbytes > self.limit:
            self.spilling = True
            return SpillDecision(
                True,
                f"RSS {rss / MB:.0f} MB + accumulator {nbytes / MB:.1f} MB > {self.describe()}",
            )
        return SpillDecision(False, "")


class SpillError(HistoflowError):
    """The spill cache cannot be created or written."""


class SpillCache:
    """Directory for spilled accumulators under the job's temporary directory, made on
    first use and removed by `cleanup()` (called on success and on failure). It is a
    job folder (histoflow.io.atomic.make_job_dir) of `sample`, so the next merge of the
    sample removes what a killed one left."""

    def __init__(self, tmpdir: str | None = None, sample: str | None = None):
        self.tmpdir = tmpdir
        self.sample = sample
        self.root: Path | None = None
        self._n = 0

    def new_dir(self) -> Path:
        """A fresh path for one spilled canvas (the cache is made on first use)."""
        if self.root is None:
            try:
                self.root = make_job_dir("merge", self.sample, self.tmpdir)
            except OSError as exc:
                where = self.tmpdir or tempfile.gettempdir()
                raise SpillError(
                    f"spill directory '{where}' is not usable ({exc.strerror or exc}); point the "
                    "job's tmpdir resource (or TMPDIR) at a writable disk with free space, or "
                    "raise merge.memory_percent so the merge stays in memory"
                ) from exc
            log.info("spill cache: %s", self.root)
        self._n += 1
        return self.root / f"canvas-{self._n:06d}.zarr"

    def require(self, nbytes: int) -> None:
        """Refuse (DiskSpaceError) a spilled canvas of `nbytes` that cannot fit."""
        where = self.root or self.tmpdir or tempfile.gettempdir()
        require_free_space(where, nbytes, sample=self.sample, what="merge spill cache")

    def cleanup(self) -> None:
        """Remove the cache and everything in it."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            log.info("spill cache removed: %s", self.root)
            self.root = None
