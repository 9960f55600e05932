"""A synthetic load on the per-tile store writers, with the writer's own peak memory.

`measure(fmt, n, d, out)` runs a fresh Python process that opens a writer, writes `n`
tiles of `d` float32 values one `write()` at a time (as infer_tiles does) and closes
it. It reports the peak RSS growth over the RSS just before the first write (Linux
/proc/self/status VmHWM, reset through clear_refs), the wall time and the bytes on
disk. A writer that streams has a growth that does not follow `n`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENGINE = Path(__file__).resolve().parents[2]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def write_tiles(fmt: str, n: int, d: int, out: str | os.PathLike) -> dict:
    """In this process: write the load; {"growth": bytes, "wall": seconds}."""
    from histoflow.io.tile_stores import TileResponse, create_writer

    pool = np.random.default_rng(0).normal(size=(64, d)).astype(np.float32)
    writer = create_writer(fmt, out)
    writer.open(n, d)
    writer.set_metadata({"name": "synthetic", "patch_size": 224})
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    for i in range(n):
        writer.write(TileResponse(pool[i % 64], (i % 1000 * 224, i // 1000 * 224), 1.0))
    writer.close()
    return {"growth": _status("VmHWM") - base, "wall": time.perf_counter() - t0}


def measure(fmt: str, n: int, d: int, out: str | os.PathLike) -> dict:
    """The load in a fresh process; {"growth", "wall", "disk"} (bytes, seconds, bytes)."""
    out = Path(out)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "histoflow.synthetic.writer_load", fmt, str(n), str(d), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    files = out.rglob("*") if out.is_dir() else [out]
    return {**result, "disk": sum(p.stat().st_size for p in files if p.is_file())}


if __name__ == "__main__":
    fmt, n, d, out = sys.argv[1:5]
    print(json.dumps(write_tiles(fmt, int(n), int(d), out)))
