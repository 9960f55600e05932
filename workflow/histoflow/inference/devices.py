"""Which GPU an inference job runs on: one lock per device, so jobs never share one.

`--resources gpu=N` makes Snakemake run at most N GPU jobs at once, but does not say
which device each job takes; left alone, every job would pick `cuda:0`. Each job
therefore claims a device slot: an exclusive `flock` on a file named after the device,
in a lock folder shared by the jobs of the machine (`HISTOFLOW_DEVICE_LOCKS`, default
`<tmp>/histoflow-device-locks`). The kernel drops the lock when the process ends, however
it ends (a kill included), so a killed job's device is free for the next job with no
clean-up; the lock files themselves stay and are reused.

The devices a job may use, in torch's numbering:
- `CUDA_VISIBLE_DEVICES` when set: its entries (indices or UUIDs) become cuda:0..n-1;
- else SLURM's allocation (`SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`: physical indices,
  which are torch's indices when nothing hides devices);
- else every device torch sees.
A slot's lock is named after the device's UUID where torch reports it, else after its
entry, so jobs that number the devices differently still meet on the same lock.

This module imports torch only to list real devices; tests pass fake slots.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from histoflow.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "HISTOFLOW_DEVICE_LOCKS"
# Seconds between attempts while every slot is taken, and between "still waiting" lines.
POLL_S = 1.0
REPORT_EVERY_S = 300.0


@dataclass(frozen=True)
class Slot:
    """One device a job may use: torch's index, the lock key and a readable name."""

    index: int
    key: str
    name: str = ""


def lock_dir(env: dict | None = None) -> Path:
    """The folder of the device locks (created, shared by every user of the machine)."""
    env = os.environ if env is None else env
    folder = Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "histoflow-device-locks")
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another user's folder: theirs to set
        folder.chmod(0o1777)
    return folder


def allowed_entries(env: dict | None = None) -> list[str] | None:
    """The job's device entries from CUDA_VISIBLE_DEVICES or SLURM, or None (no limit).

    An empty CUDA_VISIBLE_DEVICES hides every device: an empty list.
    """
    env = os.environ if env is None else env
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if name in env:
            entries = [e.strip() for e in env[name].split(",")]
            return [e for e in entries if e and e != "NoDevFiles"]
    return None


def cuda_slots(env: dict | None = None) -> list[Slot]:
    """The CUDA devices this job may use, with their lock keys and names."""
    import torch

    env = os.environ if env is None else env
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    entries = allowed_entries(env)
    if entries is None or "CUDA_VISIBLE_DEVICES" in env:
        # torch numbers what CUDA shows it 0..count-1 (already limited by the variable)
        indices = list(range(count))
        labels = entries if entries is not None else [str(i) for i in indices]
    else:  # SLURM's physical indices, nothing hidden from torch
        indices = [int(e) for e in entries if e.isdigit() and int(e) < count]
        labels = [str(i) for i in indices]
    slots = []
    for index, label in zip(indices, labels):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        slots.append(Slot(index, str(uuid) if uuid else label, props.name))
    return slots


def _lock_name(key: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"


def try_lock(folder: Path, slot: Slot) -> int | None:
    """An open descriptor holding the slot's exclusive lock, or None while another holds it."""
    path = folder / _lock_name(slot.key)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # the next user of the machine may lock it too
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {slot.key}\n".encode())
    return fd


@contextlib.contextmanager
def claim_slot(
    slots: Sequence[Slot],
    folder: Path,
    *,
    wait_s: float | None = None,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Slot]:
    """Hold the first free slot of `slots` for the `with` block (waits while all are taken).

    `wait_s` (None: no limit) bounds the wait; past it a ConfigError says so.
    """
    if not slots:
        raise ConfigError("no device slot to claim (no GPU visible to this job)")
    start = time.monotonic()
    last_report = None
    while True:
        for slot in slots:
            fd = try_lock(folder, slot)
            if fd is not None:
                try:
                    yield slot
                finally:
                    os.close(fd)  # the lock goes with the descriptor
                return
        now = time.monotonic()
        if wait_s is not None and now - start >= wait_s:
            raise ConfigError(
                f"every device slot ({', '.join(s.key for s in slots)}) stayed taken for "
                f"{wait_s:.0f} s (lock folder {folder})"
            )
        if last_report is None or now - last_report >= REPORT_EVERY_S:
            log.info("all %d device slots taken (locks in %s): waiting for one", len(slots), folder)
            last_report = now
        sleep(poll_s)


def _wanted_slots(name: str, field: str, env: dict | None) -> list[Slot]:
    slots = cuda_slots(env)
    if name in ("auto", "cuda"):
        return slots
    index = int(name.split(":")[1])
    chosen = [s for s in slots if s.index == index]
    if not chosen:
        raise ConfigError(
            f"config field '{field}': '{name}' asked for, but this job sees "
            f"{len(slots)} CUDA device(s)"
        )
    return chosen


@contextlib.contextmanager
def claim_device(name: str, field: str, env: dict | None = None) -> Iterator:
    """The torch device for config value `name`, held for the `with` block.

    CUDA devices ('auto' with a GPU, 'cuda', 'cuda:N') are claimed through their slot
    lock and logged with their name; 'cuda' and 'auto' take any free device the job
    may use, 'cuda:N' waits for that one. Other devices are returned as they are.
    """
    import torch

    from histoflow.inference.core import pick_device

    device = pick_device(name, field)
    if device.type != "cuda":
        log.info("device %s", device)
        yield device
        return
    with claim_slot(_wanted_slots(name, field, env), lock_dir(env)) as slot:
        torch.cuda.set_device(slot.index)
        log.info("device cuda:%d '%s' (device slot %s)", slot.index, slot.name, slot.key)
        yield torch.device("cuda", slot.index)
