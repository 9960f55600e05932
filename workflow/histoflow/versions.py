"""The versions of the software that decides the numbers in the results.

One list, recorded alike in raw.zarr's attributes, the per-tile stores and
manifest.json, so a result can be traced to the environment that produced it.
"""

from __future__ import annotations

import platform
from importlib import metadata

# Distributions whose versions decide the numbers in the results: the engine and its
# workflow manager, the array and image stack, the model runtime and every writer of a
# result file.
PACKAGES = (
    "histoflow",
    "snakemake",
    "numpy",
    "scipy",
    "scikit-image",
    "pillow",
    "openslide-python",
    "openslide-bin",
    "torch",
    "zarr",
    "numcodecs",
    "h5py",
    "pandas",
    "pyarrow",
    "shapely",
    "anndata",
    "tifffile",
    "imagecodecs",
)


def package_versions() -> dict[str, str | None]:
    """Python's version, each of `PACKAGES` and the OpenSlide C library's (None: absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["openslide-library"] = _openslide_library()
    return versions


def _openslide_library() -> str | None:
    """The OpenSlide C library's version, None when it cannot be loaded."""
    try:
        import openslide
    except (ImportError, OSError):  # no OpenSlide library is a fact to record
        return None
    return getattr(openslide, "__library_version__", None)
