"""Shared start-up for the thin `script:` entry points.

Puts the engine package (workflow/) on sys.path, so scripts also run in conda envs
where histoflow is not installed, and sends logging, warnings and stderr (tqdm
progress bars) to the rule's log file.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
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
    """Call `main()`; a histoflow error becomes one clear line in the log and exit 1."""
    log = setup(snakemake)
    from histoflow.errors import HistoflowError

    try:
        main()
    except HistoflowError as exc:
        log.error("%s", exc)
        print(f"histoflow error: {exc}", file=sys.__stderr__)
        sys.exit(1)
