"""Dense inference (`infer_patches`): the tissue patches of a slide through a dense model.

Patches are read by the shared inference core (`histoflow.inference.core`: one slide
handle per DataLoader worker, normalised on the device, optional CUDA autocast),
passed through each head's activation and streamed to raw.zarr chunk by chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

from histoflow.config import schema_defaults
from histoflow.inference import core, devices
from histoflow.inference.grid import PatchGrid, make_grid
from histoflow.inference.threads import loader_workers
from histoflow.io.raw_zarr import RawZarrWriter
from histoflow.manifest.fingerprint import identity
from histoflow.models.card import ModelCard
from histoflow.models.loader import outputs_by_head
from histoflow.slide import Slide, open_slide
from histoflow.stain_norm.transfer import StainTransfer, plan_transfer
from histoflow.versions import package_versions

log = logging.getLogger(__name__)

OUTPUT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class InferenceOptions:
    """The config section `inference`; defaults come from the config schema."""

    batch_size: int
    num_workers: int | str
    device: str
    precision: str
    memory_format: str
    compile: bool
    stride: tuple[int, int] | None
    min_tissue_fraction: float
    dtype: str
    chunk_patches: int
    stain_normalisation: dict | None = None

    @classmethod
    def from_config(cls, options: dict | None = None) -> InferenceOptions:
        """Options from the config section (keys it lacks take the schema's defaults)."""
        names = {f.name for f in fields(cls)}
        opts = {**schema_defaults("inference"), **(options or {})}
        opts = {k: v for k, v in opts.items() if k in names}
        stride = opts["stride"]
        if isinstance(stride, int):
            opts["stride"] = (stride, stride)
        elif stride is not None:
            opts["stride"] = tuple(stride)
        return cls(**opts)


def activate(tensor: torch.Tensor, activation: str) -> torch.Tensor:
    """A head's activation ('sigmoid', 'softmax' over channels, or 'none')."""
    if activation == "sigmoid":
        return torch.sigmoid(tensor)
    if activation == "softmax":
        return torch.softmax(tensor, dim=1)
    return tensor


def plan_grid(slide: Slide, card: ModelCard, opts: InferenceOptions, mask=None, mask_meta=None):
    """The patch grid of `slide` at the card's mpp, filtered by the tissue mask, and (H, W)."""
    shape = slide.size_at(card.mpp)[::-1]  # (H, W)
    scale_to_mask = None
    if mask is not None:
        scale = card.mpp / slide.mpp  # level-0 px per model px
        sx, sy = mask_meta["mask_scale"]
        scale_to_mask = (scale / sx, scale / sy)
    return make_grid(
        shape,
        card.patch_input,
        card.patch_output,
        opts.stride or (tuple(card.card["stride"]) if "stride" in card.card else None),
        mask,
        scale_to_mask,
        opts.min_tissue_fraction,
    ), shape


def raw_attrs(
    card: ModelCard,
    grid: PatchGrid,
    shape: tuple[int, int],
    slide: Slide,
    opts: InferenceOptions,
    sample: str | None,
) -> dict:
    """The attributes of raw.zarr (workflow/CONTRACTS.md)."""
    return {
        "sample": sample,
        "model": card.card,
        "weights_sha256": card.weights_sha256(),
        "mpp": card.mpp,
        "slide_mpp": slide.mpp,
        "scale": card.mpp / slide.mpp,
        "slide_dimensions": list(slide.dimensions),
        "shape": list(shape),
        "patch_input": list(card.patch_input),
        "patch_output": list(card.patch_output),
        "stride": list(grid.stride),
        "grid_shape": list(grid.grid_shape),
        "heads": [
            {
                "name": h["name"],
                "channels": h["channels"],
                "activation": h["activation"],
            }
            for h in card.heads
        ],
        "min_tissue_fraction": opts.min_tissue_fraction,
        "versions": package_versions(),
    }


def head_arrays(
    card: ModelCard, raw, out_dtype: torch.dtype, reused: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """Each head's activated output as an (B, h, w, C) array of `out_dtype`.

    `reused` is the input buffer the normaliser overwrites with the next batch: an
    output that is a view of it (an identity-like model) is copied, as the arrays are
    written after the next batch has been read.
    """
    outs = outputs_by_head(card, raw)
    arrays = {}
    for h in card.heads:
        # Activation and cast on the device, then one contiguous NHWC copy to the host:
        # free for a channels-last output, and half the bytes for float16.
        t = activate(outs[h["name"]].float(), h["activation"]).to(out_dtype)
        t = t.permute(0, 2, 3, 1).contiguous()
        if reused is not None and t.untyped_storage().data_ptr() == (
            reused.untyped_storage().data_ptr()
        ):
            t = t.clone()
        arrays[h["name"]] = t.cpu().numpy()
    return arrays


def run(
    slide_path: str,
    card: ModelCard,
    model: torch.nn.Module,
    out_path: str,
    opts: InferenceOptions,
    sample: str | None = None,
    mpp_override: float | None = None,
    mask: np.ndarray | None = None,
    mask_meta: dict | None = None,
    threads: int | None = None,
    stats: core.ForwardStats | None = None,
    thumbnail: np.ndarray | None = None,
) -> PatchGrid:
    """Predict every tissue patch of one slide into raw.zarr at `out_path`; returns the grid.

    A partial store left by an interrupted run with the same slide (size, mtime, content
    hash), grid and options is resumed; any other partial store is discarded. `threads`
    is the job's cores (torch's intra-op threads, set by the caller; None: torch's
    current count), from which `num_workers: auto` is sized. A CUDA device is claimed
    through its slot lock for the whole run (histoflow.inference.devices). `stats`
    collects the forward loop's loader wait. `thumbnail` (the mask stage's, with `mask`)
    is what `inference.stain_normalisation` fits the slide's stains on.
    """
    stain = plan_transfer(opts.stain_normalisation, thumbnail, mask, sample, slide_path)
    with devices.claim_device(opts.device, "inference.device") as device:
        return _run_on(
            device,
            slide_path,
            card,
            model,
            out_path,
            opts,
            sample,
            mpp_override,
            mask,
            mask_meta,
            threads or torch.get_num_threads(),
            stats if stats is not None else core.ForwardStats(),
            stain,
        )


def _run_on(
    device,
    slide_path,
    card,
    model,
    out_path,
    opts,
    sample,
    mpp_override,
    mask,
    mask_meta,
    threads,
    stats,
    stain,
) -> PatchGrid:
    core.prepare_process(device)
    with open_slide(slide_path, sample=sample, mpp=mpp_override) as slide:
        grid, shape = plan_grid(slide, card, opts, mask, mask_meta)
        attrs = raw_attrs(card, grid, shape, slide, opts, sample)
        if stain is not None:
            attrs["stain_normalisation"] = stain[1]
        cache = core.tile_cache_bytes(slide, card.mpp, card.patch_input[0])
    writer = RawZarrWriter(
        out_path,
        grid.boxes,
        grid.grid,
        card.heads,
        card.patch_output,
        attrs,
        dtype=opts.dtype,
        chunk_patches=opts.chunk_patches,
        background=True,
        inputs={"slide": identity(slide_path)},
    )
    workers = loader_workers(opts.num_workers, threads, device.type)
    layout = core.memory_format(opts.memory_format, device)
    log.info(
        "%d patches (grid %dx%d, stride %s) at %.3f µm/px, %d to compute; torch threads %d, "
        "loader workers %d, layout %s",
        len(grid.boxes),
        *grid.grid_shape,
        list(grid.stride),
        card.mpp,
        writer.remaining,
        torch.get_num_threads(),
        workers,
        str(layout).removeprefix("torch."),
    )
    boxes = grid.input_boxes()
    regions = np.column_stack(
        [np.zeros(len(boxes), np.int64), boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
    )
    done = writer.written
    dataset = core.SlideRegions(
        core.slide_opener(slide_path, sample, mpp_override),
        regions[done:],
        card.mpp,
        runs=core.plan_runs(regions)[done:],
        cache_bytes=cache,
    )
    loader = core.make_loader(dataset, opts.batch_size, workers, device)
    restain = None if stain is None else StainTransfer(stain[0], device)
    normalise = core.Normaliser(card.card["input"], device, layout=layout, stain=restain)
    model = core.prepare_model(model, device, layout)
    if opts.compile and len(dataset):
        example = torch.zeros(
            (min(opts.batch_size, len(dataset)), 3, *card.patch_input), device=device
        ).to(memory_format=layout)
        model = core.compile_model(model, example, opts.precision)
    bar = tqdm(
        total=len(grid.boxes),
        initial=writer.written,
        unit="patch",
        desc=sample or "infer",
        mininterval=5.0,
        file=None,
    )
    out_dtype = OUTPUT_DTYPES[opts.dtype]
    try:
        for n, raw in core.forward_batches(model, loader, normalise, opts.precision, stats):
            writer.append(head_arrays(card, raw, out_dtype, normalise.buffer))
            bar.update(n)
    except BaseException:
        writer.abort()  # chunks already on disk stay, for a resume
        raise
    bar.close()
    writer.close()
    log.info(
        "wrote %s (%.1f patches/s); %s; %s",
        out_path,
        bar.format_dict["n"] / max(bar.format_dict["elapsed"], 1e-9),
        stats.summary(),
        core.cpu_usage(),
    )
    return grid
