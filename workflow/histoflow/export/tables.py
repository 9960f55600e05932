"""Per-object TSV: one line per instance, streamed from the instance table.

Coordinates are level-0 pixels; areas are given in pixels² and µm². Numbers have a
fixed number of decimals so the file is byte-identical across reruns.
"""

from __future__ import annotations

import logging
from pathlib import Path

from histoflow.export.instances import object_uuid
from histoflow.export.summary import tsv_text
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import MEASURE_COLUMNS, open_instance_table

log = logging.getLogger(__name__)

COLUMNS = (
    "id",
    "instance_id",
    "task",
    "class_id",
    "class_name",
    "probability",
    *MEASURE_COLUMNS,
    "area_um2",
)


def export_objects_tsv(instances_path: str | Path, out_path: str | Path, sample: str) -> int:
    """Write the TSV; returns the number of objects (rows below the header)."""
    table = open_instance_table(instances_path)
    mpp2 = table.slide_mpp**2
    n = 0
    with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        for b in table.batches():
            for i, iid in enumerate(b["id"]):
                fields = [
                    object_uuid(sample, iid),
                    tsv_text(iid),
                    tsv_text(b["task"][i]),
                    str(int(b["class_id"][i])),
                    tsv_text(b["class_name"][i]),
                    f"{b['probability'][i]:.4f}",
                    *(f"{b[c][i]:.2f}" for c in MEASURE_COLUMNS),
                    f"{float(b['area_px'][i]) * mpp2:.3f}",
                ]
                fh.write("\t".join(fields) + "\n")
                n += 1
    log.info("%s: %d objects written", sample, n)
    return n
