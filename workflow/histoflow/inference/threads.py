"""The CPU resources of an inference job: torch threads, loader workers, huge pages.

- torch's intra-op threads are the rule's `threads`, the cores Snakemake gives the job
  (`rule_threads` picks that number: `inference.threads`, else the run's cores shared
  among the GPUs declared with `--resources gpu=N`, else 8 on a cluster).
- DataLoader workers (`inference.num_workers`) are a separate setting; `auto` keeps the
  device fed without taking the model's cores: on a GPU most of the job's cores read
  patches, on the CPU one worker reads ahead while torch computes.
- `bound_heap` fixes glibc's heap thresholds so batch tensors are reused, not mapped
  and faulted afresh at every batch.
- `prefer_huge_pages` lets torch back its large tensors with transparent huge pages:
  every batch allocates fresh activations, and with 4 KiB pages each one costs a page
  fault per page (system time above user time on a small model).

This module does not import torch at import time: `prefer_huge_pages` must run before
torch is first imported to take effect.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# torch's CPU allocator reads this once, at its first allocation: 2 MiB-aligned buffers
# for tensors of 2 MiB and more, advised as huge pages (c10 alloc_cpu).
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
# Threads of an infer job where the run has no core count (cluster executors): the
# SLURM profile sets `set-threads` instead.
CLUSTER_THREADS = 8
# Loader workers `auto` starts at most, on a GPU.
MAX_AUTO_WORKERS = 16


def prefer_huge_pages() -> bool:
    """Ask torch's allocator for huge pages (unless the environment says otherwise).

    True when the setting is in force for this process's torch: set before torch's
    first import, or already set in the environment.
    """
    if HUGE_PAGES_ENV in os.environ:
        return os.environ[HUGE_PAGES_ENV] not in ("", "0")
    if "torch" in sys.modules:
        return False
    os.environ[HUGE_PAGES_ENV] = "1"
    return True


def _resource(resources: dict, name: str) -> int | None:
    value = resources.get(name)
    value = getattr(value, "value", value)  # Snakemake 9 wraps them in Resource objects
    return value if isinstance(value, int) else None


def rule_threads(options: dict, workflow) -> int:
    """`threads:` of infer_patches: the config's `inference.threads`, else the run's
    cores divided among its GPU slots (`--resources gpu=N`), at least 1.

    `workflow` is Snakemake's workflow object (only its `global_resources` are read).
    """
    if options.get("threads"):
        return int(options["threads"])
    resources = getattr(workflow, "global_resources", {}) or {}
    cores = _resource(resources, "_cores")
    if cores is None or cores >= sys.maxsize:
        return CLUSTER_THREADS
    gpus = _resource(resources, "gpu") or 1
    return max(1, cores // max(1, gpus))


def loader_workers(setting: int | str, threads: int, device_type: str) -> int:
    """DataLoader worker processes for a job of `threads` cores on `device_type`.

    An integer setting is taken as given. `auto`: on CUDA, the job's cores (at least 2,
    at most MAX_AUTO_WORKERS), as torch needs few host threads there; elsewhere one
    worker per 8 cores (at least one), so reading overlaps the forward and the rest of
    the cores stay torch's.
    """
    if setting != "auto":
        return int(setting)
    if device_type == "cuda":
        return max(2, min(MAX_AUTO_WORKERS, threads))
    return max(1, threads // 8)


def use_threads(threads: int) -> int:
    """Set torch's intra-op threads to the job's `threads` (at least 1); returns them."""
    import torch

    n = max(1, int(threads))
    torch.set_num_threads(n)
    return torch.get_num_threads()


# glibc's mallopt parameters and the values bound_heap sets (benchmarks/bench_heap.py).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20


def bound_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> None:
    """Fix glibc's mmap and trim thresholds for the forward loop.

    glibc's default raises the mmap threshold after large frees, after which the heap
    fragments and grows with the slide when DataLoader workers feed the process (0.4 to
    1.2 GB over 1600 patches). A low fixed threshold (1 MiB) keeps it flat but maps and
    unmaps every batch-sized tensor, one page fault per 4 KiB touched: system CPU 20 %
    of user. Fixed at 256 MiB (mmap; above a batch's activations, 64 MiB for TinyFCN at
    batch 16) and 512 MiB (trim), batch tensors are reused from the heap: system CPU
    about 2 % of user, a tenth of the faults, RSS levelling off 250-370 MB higher.
    Setting them also turns the dynamic adjustment off; forked workers inherit them.
    No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))
        libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    except (OSError, AttributeError):
        pass


def release_heap() -> None:
    """Give the free memory at the top and inside glibc's heap back to the system
    (malloc_trim), after a large transient such as a Delaunay triangulation. No-op off
    glibc."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
