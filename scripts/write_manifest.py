"""write_manifest: provenance (manifest.json) and run record (run.json) of one slide."""

from pathlib import Path

import _common

WORKFLOW_DIR = Path(_common.__file__).resolve().parents[1]


def main():
    from histoflow.manifest import build_manifest, build_run_info, write_json

    sm = snakemake  # noqa: F821 - injected by Snakemake
    sample = sm.wildcards.sample
    manifest = build_manifest(
        sample,
        dict(sm.params.sheet),
        dict(sm.params.effective_config),
        Path(sm.output.manifest).parent,
        checksum=sm.params.checksum,
    )
    write_json(manifest, sm.output.manifest)
    write_json(build_run_info(sample, sm.params.benchmarks, WORKFLOW_DIR), sm.output.run)


_common.run(snakemake, main)  # noqa: F821
