"""Device slots: concurrent jobs on fake GPU slots never hold the same one, a killed job's
slot is free again, and the devices a job may use come from CUDA_VISIBLE_DEVICES or
SLURM's allocation. No GPU needed: the slots are fake, the locks real."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from histoflow.errors import ConfigError
from histoflow.inference import devices

# A job: claim one of the slots given as argv[2:], record when, hold it, record the release.
JOB = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from histoflow.inference.devices import Slot, claim_slot
folder, hold, keys = Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
with claim_slot([Slot(i, k) for i, k in enumerate(keys)], folder, poll_s=0.05) as slot:
    t0 = time.time()
    print("holding", slot.key, flush=True)
    time.sleep(hold)
    t1 = time.time()
print(json.dumps({"key": slot.key, "start": t0, "end": t1}), flush=True)
"""


def _job(folder, hold, keys):
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(REPO / "workflow"), str(folder), str(hold), *keys],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_jobs_never_share_a_slot(tmp_path):
    keys = ["GPU-a", "GPU-b", "GPU-c"]
    # one job more than slots: it must wait until a slot is released
    jobs = [_job(tmp_path, 1.5, keys) for _ in range(len(keys) + 1)]
    records = []
    for job in jobs:
        out, _ = job.communicate(timeout=120)
        assert job.returncode == 0
        records.append(json.loads(out.strip().splitlines()[-1]))
    assert {r["key"] for r in records} == set(keys)  # every slot used
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if a["key"] == b["key"]:  # the same slot only one after the other
                assert a["end"] <= b["start"] or b["end"] <= a["start"]
    first_release = min(r["end"] for r in records)
    assert sum(r["start"] >= first_release for r in records) == 1  # the fourth one waited


def test_killed_job_slot_is_reclaimed(tmp_path):
    job = _job(tmp_path, 600, ["GPU-x"])
    try:
        assert job.stdout.readline().startswith("holding GPU-x")
        with (
            pytest.raises(ConfigError, match="stayed taken"),
            devices.claim_slot([devices.Slot(0, "GPU-x")], tmp_path, wait_s=0.3, poll_s=0.05),
        ):
            pass
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        start = time.monotonic()
        with devices.claim_slot(
            [devices.Slot(0, "GPU-x")], tmp_path, wait_s=10, poll_s=0.05
        ) as slot:
            assert slot.key == "GPU-x"
        assert time.monotonic() - start < 5
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_released_on_exit_of_the_block(tmp_path):
    slots = [devices.Slot(0, "0")]
    with devices.claim_slot(slots, tmp_path) as slot:
        assert (tmp_path / "gpu-0.lock").read_text().split() == [str(os.getpid()), "0"]
        assert devices.try_lock(tmp_path, slot) is None  # held, even for this process
    fd = devices.try_lock(tmp_path, slots[0])
    assert fd is not None
    os.close(fd)


def test_allowed_entries_from_cuda_visible_devices_and_slurm():
    assert devices.allowed_entries({}) is None
    assert devices.allowed_entries({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert devices.allowed_entries({"CUDA_VISIBLE_DEVICES": ""}) == []
    # CUDA_VISIBLE_DEVICES wins (SLURM sets both where it constrains devices)
    env = {"CUDA_VISIBLE_DEVICES": "GPU-1f", "SLURM_JOB_GPUS": "5"}
    assert devices.allowed_entries(env) == ["GPU-1f"]
    assert devices.allowed_entries({"SLURM_JOB_GPUS": "1,3"}) == ["1", "3"]
    assert devices.allowed_entries({"SLURM_STEP_GPUS": "2", "SLURM_JOB_GPUS": "1,2"}) == ["2"]


def test_lock_dir_from_environment(tmp_path):
    folder = devices.lock_dir({devices.LOCK_DIR_ENV: str(tmp_path / "locks")})
    assert folder == tmp_path / "locks" and folder.is_dir()


def test_cpu_device_takes_no_slot(tmp_path):
    env = {devices.LOCK_DIR_ENV: str(tmp_path)}
    with devices.claim_device("cpu", "inference.device", env) as device:
        assert device == torch.device("cpu")
    assert not list(tmp_path.iterdir())


def test_no_slot_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no device slot"), devices.claim_slot([], tmp_path):
        pass
