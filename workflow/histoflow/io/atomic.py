"""Atomic outputs and job temporary folders: nothing half-written looks complete, and
nothing a job leaves behind (even after SIGKILL) outlives the next run of that job.

A temporary sibling is named `.<name>.histoflow-tmp-<pid>` beside its final path; a job
temporary folder `histoflow-<kind>-<sample>@<host>.<pid>.<n>` in the temporary
directory (TMPDIR or the job's tmpdir resource). Both names carry the histoflow mark
and the writer's pid, so the next writer of the same output (or the next job of the
same kind and sample) recognises and removes the leftovers of a killed one, and never
a file a user made. Folders in TMPDIR are removed only when their process is gone.

`HISTOFLOW_TEST_KILL` is a test hook: a comma-separated list of output file names
(`raw.zarr`, `maps.zarr`, `<sample>.ome.tif`, ...); a job about to publish one of them
(raw.zarr: after its first chunk) SIGKILLs itself there, as a scheduler or the OOM
killer would. Unset, it costs one environment lookup per output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = "histoflow-tmp"
KILL_ENV = "HISTOFLOW_TEST_KILL"
_counter = itertools.count()


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process when `name` is listed in HISTOFLOW_TEST_KILL."""
    wanted = os.environ.get(KILL_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def temporary_sibling(final: str | os.PathLike) -> Path:
    """A hidden path next to `final`, on the same filesystem so the rename is atomic."""
    final = Path(final)
    return final.with_name(f".{final.name}.{TEMP_MARK}-{os.getpid()}")


def stale_siblings(final: str | os.PathLike) -> list[Path]:
    """Temporary siblings of `final` left by other (killed) writers, with anything a
    library made beside them (`-journal`, `.lock`)."""
    final = Path(final)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.{TEMP_MARK}-(\d+)(?:[-.].*)?")
    mine = str(os.getpid())
    if not final.parent.is_dir():
        return []
    found = []
    for entry in final.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) != mine:
            found.append(entry)
    return sorted(found)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto `final` on success.

    Works for files and for directory stores (Zarr). On any exception the temporary
    is removed and `final` is left untouched, so nothing half-written looks complete.
    Leftovers of killed writers of `final` are removed first: the workflow runs one
    job per output at a time, so any other writer's temporary is stale.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_siblings(final):
        _remove(stale)
    tmp = temporary_sibling(final)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    kill_point(final.name)
    if final.exists() and final.is_dir() and not final.is_symlink():
        # os.replace cannot overwrite a non-empty directory.
        shutil.rmtree(final)
    os.replace(tmp, final)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _job_prefix(kind: str, sample: str | None) -> str:
    return f"histoflow-{kind}-{sample or 'job'}@{socket.gethostname()}."


def remove_stale_job_dirs(kind: str, sample: str | None, tmpdir: str | os.PathLike | None):
    """Remove the job folders of `kind` and `sample` on this host whose process is gone;
    returns them."""
    base = Path(tmpdir or tempfile.gettempdir())
    prefix = _job_prefix(kind, sample)
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.\d+")
    removed = []
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            match = pattern.fullmatch(entry.name)
            pid = int(match.group(1)) if match else None
            if pid is not None and pid != os.getpid() and not _alive(pid):
                _remove(entry)
                removed.append(entry)
    return removed


def make_job_dir(kind: str, sample: str | None, tmpdir: str | os.PathLike | None) -> Path:
    """A fresh job folder in `tmpdir` (default: TMPDIR), after removing stale ones of
    the same kind and sample. The caller removes it (see `job_dir`)."""
    base = Path(tmpdir or tempfile.gettempdir())
    remove_stale_job_dirs(kind, sample, base)
    path = base / f"{_job_prefix(kind, sample)}{os.getpid()}.{next(_counter)}"
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def job_dir(
    kind: str, sample: str | None, tmpdir: str | os.PathLike | None = None
) -> Iterator[Path]:
    """A job folder (`make_job_dir`) removed with its contents on exit."""
    path = make_job_dir(kind, sample, tmpdir)
    try:
        yield path
    finally:
        _remove(path)
