"""Shared start-up for the thin `script:` entry points.

Puts the engine package (workflow/) on sys.path, so scripts also run in conda envs
where histoflow is not installed, and sends logging, warnings and stderr (tqdm
progress bars) to the rule's log file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
import traceback
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "workflow"


def setup(snakemake) -> logging.Logger:
    if str(ENGINE) not in sys.path:
        sys.path.insert(0, str(ENGINE))
    handlers: list[logging.Handler] = []
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    log = logging.getLogger(f"histoflow.{snakemake.rule}")
    sample = getattr(snakemake.wildcards, "sample", None)
    log.info("rule %s%s", snakemake.rule, f" sample {sample}" if sample else "")
    if os.environ.get("SLURM_JOB_ID"):
        # Ties the log to the cluster's records (sacct -j / seff).
        log.info("SLURM job %s on %s", os.environ["SLURM_JOB_ID"], socket.gethostname())
    return log


def run(snakemake, main) -> None:
    """Call `main()`; any failure becomes one clear line in the log and on stderr, and exit 1.

    A histoflow error is already that line. Anything else (disk full, out of memory,
    another OSError, a bug) is described in one line naming the sample, the path and,
    for a full disk, the free space; its traceback follows that line in the log, for
    developers.
    """
    log = setup(snakemake)
    from histoflow.errors import HistoflowError

    try:
        decode_params(snakemake)
        main()
    except HistoflowError as exc:
        _fail(log, str(exc))
    except Exception as exc:  # MemoryError and OSError included
        _fail(log, failure_line(exc, snakemake), traceback.format_exc())


def decode_params(snakemake) -> None:
    """Undo the rule files' `report_safe` on every param, in place (histoflow.report_safe)."""
    from histoflow.report_safe import decode

    # Snakemake 9 rebuilds `snakemake.params` from this store on each access.
    params = getattr(snakemake, "_params_store", None) or getattr(snakemake, "params", None)
    if params is None:  # a job object without params (tests drive main() directly)
        return
    for i, value in enumerate(params):
        params[i] = decode(value)
    for name in list(params.keys()):
        setattr(params, name, decode(getattr(params, name)))


def _fail(log: logging.Logger, line: str, trace: str | None = None) -> None:
    log.error("%s", line)
    if trace:
        log.info("traceback of the error above (for developers):\n%s", trace.rstrip())
    print(f"histoflow error: {line}", file=sys.__stderr__)
    sys.exit(1)


def _root_cause(exc: BaseException) -> BaseException:
    """The disk-full or out-of-memory error behind `exc` (libraries re-raise them as
    their own errors), else `exc`."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (
            isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT)
        ):
            return current
        current = current.__cause__ or current.__context__
    return exc


def failure_line(exc: BaseException, snakemake) -> str:
    """One line for an error that is not a HistoflowError: what, sample, path, space."""
    exc = _root_cause(exc)
    sample = getattr(snakemake.wildcards, "sample", None)
    where = [f"sample '{sample}'" if sample else f"rule {snakemake.rule}"]
    paths = [p for p in (getattr(exc, "filename", None), getattr(exc, "filename2", None)) if p]
    where += [f"file '{os.fsdecode(p)}'" for p in paths]
    prefix = ", ".join(where) + ": "
    if isinstance(exc, MemoryError):
        return prefix + _out_of_memory(exc, snakemake)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        targets = [os.fsdecode(p) for p in paths] or _job_dirs(snakemake)
        return prefix + f"disk full ({exc.strerror}); {_free_space(targets)}"
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        return prefix + f"{exc.strerror}{f' ({name})' if name else ''}"
    return prefix + f"unexpected {type(exc).__name__}: {exc}"


def _out_of_memory(exc: BaseException, snakemake) -> str:
    detail = str(exc) or "MemoryError"
    asked = getattr(snakemake.resources, "mem_mb", None)
    text = f"out of memory ({detail})"
    if asked:
        text += f"; the job asked for {asked} MB (resources mem_mb)"
    available = _available_memory()
    if available is not None:
        text += f"; {_size(available)} available on {socket.gethostname()}"
    return text


def _job_dirs(snakemake) -> list[str]:
    """The folders a job writes to: its outputs' parents and the temporary directory."""
    dirs = [os.path.dirname(os.path.abspath(str(p))) for p in snakemake.output]
    return [*dict.fromkeys(dirs), tempfile.gettempdir()]


def _free_space(paths: list[str]) -> str:
    """'X free on <dir>' for each distinct file system holding one of `paths`."""
    seen: dict[int, str] = {}
    for path in paths:
        existing = Path(path).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            device = existing.stat().st_dev
            if device not in seen:
                seen[device] = f"{_size(shutil.disk_usage(existing).free)} free on '{existing}'"
        except OSError:
            continue
    return ", ".join(seen.values()) or "free space unknown"


def _available_memory() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"
