"""A throw-away single-node SLURM cluster on localhost, for end-to-end tests.

Installs Debian's SLURM and MUNGE packages when missing (root and apt-get needed),
writes a slurm.conf for this machine with one fake GPU (a gres backed by a character
device, so `--gpus=1` is scheduled and gets CUDA_VISIBLE_DEVICES), starts munged,
slurmctld and slurmd with pid and log files in a scratch folder, and stops exactly
the daemons it started. See /work/shared/notes/slurm-on-one-machine.md for why each
setting is there.

    with SlurmCluster(scratch) as cluster:   # raises SlurmUnavailable with the reason
        subprocess.run(["sbatch", "-p", cluster.partition, ...])

Command line (manual use): python tests/slurm/cluster.py SCRATCH -- COMMAND ...
runs COMMAND against the cluster and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "srun", "munged")
CONF_DIR = Path("/etc/slurm")
PARTITION = "main"
MUNGE_RUN = Path("/run/munge")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
HEADER = "# Written by tests/slurm/cluster.py"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
USAGE = "usage: python tests/slurm/cluster.py SCRATCH -- COMMAND [ARGS...]"


class SlurmUnavailable(RuntimeError):
    """No cluster can be started here; the message says why (used as the skip reason)."""


def _run(cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} not readable)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits to be reaped by its parent.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=SBIN_PATH) is None]


def install_packages(timeout: float = 240) -> float:
    """apt-get the SLURM and MUNGE packages; returns seconds spent (0 if present)."""
    if not missing_binaries():
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM binaries missing ({', '.join(missing_binaries())}) and not root, "
            "so they cannot be installed"
        )
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("SLURM binaries missing and no apt-get to install them")
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Packages must not start their services: this module starts and stops its own.
    own_policy = not POLICY_RC.exists()
    if own_policy:
        POLICY_RC.write_text("#!/bin/sh\n# histoflow tests: no service starts\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
        ):
            try:
                proc = _run(cmd, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                raise SlurmUnavailable(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from None
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
                raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: " + " | ".join(tail))
    finally:
        if own_policy:
            POLICY_RC.unlink(missing_ok=True)
    if missing_binaries():
        raise SlurmUnavailable(f"still missing after install: {', '.join(missing_binaries())}")
    return time.monotonic() - start


class SlurmCluster:
    """Start with `start()` or `with`; `stop()` stops only what `start()` started."""

    def __init__(self, scratch: str | os.PathLike, partition: str = PARTITION):
        self.scratch = Path(scratch).resolve()
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.install_seconds = 0.0
        self._pids: list[tuple[str, int]] = []  # (name, pid) of daemons we started
        self._links: list[Path] = []  # symlinks we made in /etc/slurm
        self._made_conf_dir = False

    # -- configuration -----------------------------------------------------------

    def write_config(self) -> Path:
        s = self.scratch
        for sub in ("state", "spool", "dev", "log"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total_kb = int(next(x for x in meminfo if x.startswith("MemTotal")).split()[1])
        mem_mb = int(total_kb / 1024 * 0.85)
        # A GPU slurmd accepts: a character device (here /dev/null's numbers).
        gpu = s / "dev" / "nvidia0"
        if not gpu.exists():
            os.mknod(gpu, 0o666 | 0o020000, os.makedev(1, 3))
        conf = f"""\
{HEADER}: single-node test cluster, removed after the tests.
ClusterName=histoflow-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
DefMemPerCPU=1000
GresTypes=gpu
StateSaveLocation={s}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        (s / "slurm.conf").write_text(conf)
        (s / "gres.conf").write_text(
            f"{HEADER}\nAutoDetect=off\nNodeName={self.host} Name=gpu File={gpu}\n"
        )
        return s / "slurm.conf"

    def _link_config(self) -> None:
        # The executor's job step clears SLURM_CONF before its inner srun, so clients
        # need the default path. Never replace a real config there.
        if not CONF_DIR.exists():
            CONF_DIR.mkdir(parents=True)
            self._made_conf_dir = True
        for name in ("slurm.conf", "gres.conf"):
            link, target = CONF_DIR / name, self.scratch / name
            if link.is_symlink():
                # Left by a run that died: its target is gone or is one of our files.
                old = Path(os.readlink(link))
                if not old.exists() or old.read_text(errors="replace").startswith(HEADER):
                    link.unlink()
            if link.exists() or link.is_symlink():
                raise SlurmUnavailable(
                    f"{link} exists and is not ours: refusing to replace a real SLURM config"
                )
            link.symlink_to(target)
            self._links.append(link)

    # -- daemons -------------------------------------------------------------------

    def _munge_works(self) -> bool:
        try:
            cred = _run(["munge", "-n"], timeout=10)
            if cred.returncode != 0:
                return False
            return _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _start_munge(self) -> None:
        if self._munge_works():
            return  # someone else's munged: use it, leave it running
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            proc = _run(["mungekey", "--create", "--keyfile", str(key)])
            if proc.returncode != 0:
                raise SlurmUnavailable(f"cannot create a MUNGE key: {proc.stderr.strip()}")
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        MUNGE_RUN.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        pidfile = MUNGE_RUN / "munged.pid"
        pidfile.unlink(missing_ok=True)
        proc = _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        if proc.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {proc.stderr.strip()}")
        self._remember("munged", pidfile)
        if not self._wait(self._munge_works, 10):
            raise SlurmUnavailable("munged started but `munge -n | unmunge` fails")

    def _start_daemon(self, name: str) -> None:
        log = self.scratch / "log" / f"{name}.log"
        exe = shutil.which(name, path=SBIN_PATH) or name
        proc = _run([exe], timeout=30)  # both daemonise and write their pid file
        if proc.returncode != 0:
            raise SlurmUnavailable(
                f"{name} did not start ({proc.stderr.strip()}); log:\n{_tail(log)}"
            )
        self._remember(name, self.scratch / f"{name}.pid")

    def _remember(self, name: str, pidfile: Path) -> None:
        if not self._wait(pidfile.exists, 10):
            raise SlurmUnavailable(f"{name} wrote no pid file {pidfile}")
        self._wait(lambda: pidfile.read_text().strip() != "", 5)
        self._pids.append((name, int(pidfile.read_text().split()[0])))

    @staticmethod
    def _wait(predicate, seconds: float, step: float = 0.2) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(step)
        return predicate()

    def node_state(self) -> str:
        proc = _run(["sinfo", "-h", "-o", "%T"], timeout=10)
        return proc.stdout.strip()

    def start(self, ready_timeout: float = 60) -> SlurmCluster:
        self.install_seconds = install_packages()
        if os.geteuid() != 0:
            raise SlurmUnavailable("daemons must run as root (SlurmUser=root)")
        try:
            self.write_config()
            self._link_config()
            self._start_munge()
            self._start_daemon("slurmctld")
            self._start_daemon("slurmd")
            if not self._wait(lambda: self.node_state() == "idle", ready_timeout, 0.5):
                raise SlurmUnavailable(
                    f"node not idle after {ready_timeout:.0f} s (state "
                    f"'{self.node_state()}'); slurmd log:\n"
                    f"{_tail(self.scratch / 'log' / 'slurmd.log')}"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def jobs(self) -> list[dict]:
        """Every job the controller remembers (MinJobAge keeps finished ones 10 min)."""
        fields = ("id", "name", "comment", "state", "tres", "exit")
        proc = _run(["squeue", "-h", "-t", "all", "-o", "%i\t%j\t%k\t%T\t%b\t%r"], timeout=10)
        return [dict(zip(fields, line.split("\t"))) for line in proc.stdout.splitlines() if line]

    def stop(self) -> None:
        """Cancel remaining jobs, stop our daemons (newest first), remove our links."""
        running = [j["id"] for j in self.jobs() if j["state"] in ("PENDING", "RUNNING")]
        if running and any(name == "slurmctld" for name, _ in self._pids):
            _run(["scancel", *running], timeout=20)
            self._wait(
                lambda: not any(j["state"] in ("RUNNING", "COMPLETING") for j in self.jobs()),
                20,
                0.5,
            )
        for name, pid in reversed(self._pids):
            if _comm(pid) != name[:15]:
                continue  # gone already, or the pid now belongs to another program
            os.kill(pid, signal.SIGTERM)
            if not self._wait(lambda pid=pid: not _alive(pid), 15):
                os.kill(pid, signal.SIGKILL)
                self._wait(lambda pid=pid: not _alive(pid), 5)
        self._pids.clear()
        for link in self._links:
            if link.is_symlink() and Path(os.readlink(link)).parent == self.scratch:
                link.unlink()
        self._links.clear()
        if self._made_conf_dir:
            # Left in place when something else has put files there since.
            with contextlib.suppress(OSError):
                CONF_DIR.rmdir()
            self._made_conf_dir = False

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        with SlurmCluster(argv[0]) as cluster:
            print(f"cluster up: partition {cluster.partition}, node {cluster.host}", flush=True)
            return subprocess.call(argv[2:])
    except SlurmUnavailable as exc:
        print(f"no SLURM cluster: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
