"""The heap setting of the forward loop (histoflow.inference.threads.bound_heap): a
batch-sized buffer freed and allocated again is reused from the heap, not mapped
afresh, so the page faults (system CPU) of the loop do not grow with every batch."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CYCLES = """
import resource, sys
import numpy as np
sys.path.insert(0, {workflow!r})
from histoflow.inference.threads import bound_heap
bound_heap(*{args!r})
np.ones(16 << 20, np.uint8)  # the first batch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    batch = np.ones(16 << 20, np.uint8)
    del batch
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(*args) -> int:
    """Minor page faults of 40 allocate-fill-free cycles of a 16 MiB batch buffer."""
    code = CYCLES.format(workflow=str(REPO / "workflow"), args=args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_batch_buffers_are_reused_not_mapped_again():
    shipped = faults()
    mapped = faults(1 << 20, 128 << 10)  # the former fixed 1 MiB threshold
    assert mapped >= 40 * 4  # every cycle faults its buffer in again (>= 2 MiB pages)
    assert shipped * 10 < mapped
