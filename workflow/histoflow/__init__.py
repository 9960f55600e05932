"""histoflow engine: plain Python, importable and testable without Snakemake."""

__version__ = "0.1.0"
