"""Per-slide provenance: what produced a slide's results, kept apart from when and how fast.

Two files per slide, so the reproducible part can be compared byte for byte:

- `manifest.json` (deterministic, `provenance`): the input slide's size and sha256
  (`fingerprint`), the sheet row (`sheet`), the effective config, the model card and
  weights sha256, package versions and the list of outputs present.
- `run.json` (differs on every run, `run_record`): per-rule wall times and peak memory
  (`benchmarks`, the one reader of `benchmarks/<rule>/<sample>.tsv`), host, SLURM job
  id, workflow git commit, time.

`compare` checks that two results folders hold the same results: bytes where the
format is deterministic, decoded content (`decoders`) where a container stores
timestamps; `python -m histoflow.manifest compare OLD NEW` runs it.
"""

from histoflow.manifest.benchmarks import read_benchmark, rule_timings
from histoflow.manifest.compare import compare_trees
from histoflow.manifest.fingerprint import fingerprint, identity
from histoflow.manifest.provenance import build_manifest, write_json
from histoflow.manifest.run_record import build_run_info
from histoflow.manifest.sheet import sheet_record

__all__ = [
    "build_manifest",
    "build_run_info",
    "compare_trees",
    "fingerprint",
    "identity",
    "read_benchmark",
    "rule_timings",
    "sheet_record",
    "write_json",
]
