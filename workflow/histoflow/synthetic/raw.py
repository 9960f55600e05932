"""Synthetic `infer/raw.zarr` stores that follow workflow/CONTRACTS.md.

For tests and benchmarks of the merge (and of anything else that reads raw.zarr); the
patch grid is the one dense inference uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from histoflow.inference.grid import cover

ValuesFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def grid_boxes(
    shape: tuple[int, int],
    patch: tuple[int, int],
    stride: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The dense patch grid (`histoflow.inference.grid.cover`) of the kept positions.

    Boxes (N, 4) x0 y0 x1 y1 and grid (N, 2) row col, row-major, covering `shape`
    (H, W) from `origin` (y, x); the last row/column may pass the edge. `keep`
    (rows, cols) bool drops masked-out positions.
    """
    boxes, cells, grid_shape = cover(shape, patch, stride, origin)
    if keep is None:
        return boxes, cells, grid_shape
    if keep.shape != grid_shape:
        raise ValueError(f"keep mask has shape {keep.shape}, grid is {grid_shape}")
    kept = keep.ravel()
    return boxes[kept], cells[kept], grid_shape


def random_values(heads: dict[str, int], patch: tuple[int, int], seed: int, dtype) -> ValuesFn:
    """Head outputs of seeded uniform noise, drawn batch after batch."""
    rng = np.random.default_rng(seed)

    def values(boxes: np.ndarray, grid: np.ndarray) -> dict[str, np.ndarray]:  # noqa: ARG001 - the ValuesFn signature
        n = len(boxes)
        return {
            name: rng.random((n, *patch, c), dtype=np.float32).astype(dtype)
            for name, c in heads.items()
        }

    return values


def write_synthetic_raw(
    path: str | Path,
    shape: tuple[int, int],
    patch: tuple[int, int],
    stride: tuple[int, int],
    heads: dict[str, int],
    *,
    origin: tuple[int, int] = (0, 0),
    keep: np.ndarray | None = None,
    dtype: str = "float16",
    values: ValuesFn | None = None,
    seed: int = 0,
    batch: int = 256,
    chunk_patches: int = 16,
    compressors="auto",
    sample: str = "synthetic",
) -> zarr.Group:
    """Write raw.zarr with the contract's members and attributes.

    `values(boxes, grid)` gives a batch of head outputs (default: seeded uniform noise).
    """
    boxes, grid, grid_shape = grid_boxes(shape, patch, stride, origin, keep)
    values = values or random_values(heads, patch, seed, dtype)
    n = len(boxes)
    height, width = shape
    head_list = [{"name": k, "channels": int(c), "activation": "sigmoid"} for k, c in heads.items()]
    attrs = {
        "sample": sample,
        "model": {
            "name": "synthetic",
            "kind": "dense",
            "mpp": 0.5,
            "patch_input": list(patch),
            "patch_output": list(patch),
            "heads": head_list,
        },
        "weights_sha256": None,
        "mpp": 0.5,
        "slide_mpp": 0.25,
        "scale": 2.0,
        "slide_dimensions": [width * 2, height * 2],
        "shape": [height, width],
        "patch_input": list(patch),
        "patch_output": list(patch),
        "stride": list(stride),
        "grid_shape": list(grid_shape),
        "heads": head_list,
        "versions": {"histoflow": "synthetic"},
    }
    group = zarr.open_group(Path(path), mode="w", zarr_format=3, attributes=attrs)
    group.create_array("boxes", data=boxes, chunks=(max(1, n), 4))
    group.create_array("grid", data=grid, chunks=(max(1, n), 2))
    arrays = {
        name: group.create_array(
            f"heads/{name}",
            shape=(n, *patch, c),
            dtype=dtype,
            chunks=(max(1, min(chunk_patches, n)), *patch, c),
            compressors=compressors,
            fill_value=0,
        )
        for name, c in heads.items()
    }
    for a in range(0, n, batch):
        b = min(a + batch, n)
        out = values(boxes[a:b], grid[a:b])
        for name, arr in arrays.items():
            arr[a:b] = out[name]
    return group
