"""Tissue masking on a slide thumbnail: Otsu on a stain-sensitive channel plus morphology.

Morphology sizes are given in µm and µm², converted to pixels at the thumbnail's
resolution, so the same config means the same physical filtering at any mpp.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, filters, morphology, segmentation

from histoflow.config import schema_defaults
from histoflow.errors import SlideError
from histoflow.io.mask_files import write_mask_files
from histoflow.slide import PLAIN_IMAGE_MAX_PIXELS, Slide, image_pixel_problem, open_slide

log = logging.getLogger(__name__)

OUTLINE_RGB = (0, 200, 0)
# A user mask whose aspect ratio differs from the slide's by more than this is
# almost certainly for another slide (or rotated).
MAX_ASPECT_MISMATCH = 0.02
OVERLAY_MAX_SIDE = 1024
# A user mask is resized to the thumbnail; one more than this many times finer per axis
# (or over 8192 x 8192 px, whichever is more) carries no detail the mask stage uses and
# is refused before decoding (decompression-bomb guard).
USER_MASK_MAX_FINER = 16
USER_MASK_MIN_LIMIT = 8192 * 8192
# The mask stage holds a few float copies of its thumbnail; one over 8192 x 8192 px
# (a 3 x 3 cm slide at the default 4 µm/px is 7500 x 7500) means a wrong mpp or
# thumbnail_mpp, and is refused before any pixel is read.
THUMBNAIL_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class MaskOptions:
    """The config section `mask`; defaults come from the config schema (one source)."""

    thumbnail_mpp: float
    channel: str
    smoothing_um: float
    min_threshold: float
    closing_um: float
    min_tissue_um2: float
    max_hole_um2: float

    @classmethod
    def from_config(cls, options: dict | None = None) -> MaskOptions:
        """The schema's defaults overridden by the given `mask` section."""
        return cls(**{**schema_defaults("mask"), **(options or {})})


@dataclass
class TissueMask:
    """The mask stage's result; `histoflow.io.mask_files` writes it."""

    mask: np.ndarray  # bool (h, w) at thumbnail_mpp
    thumbnail: np.ndarray  # uint8 RGB (h, w, 3)
    overlay: np.ndarray  # uint8 RGB QC picture, finer than the thumbnail
    meta: dict = field(default_factory=dict)


# Rows of the thumbnail converted at a time: the float copies of a strip, not of the
# whole thumbnail (12.6 Mpx at full size), are what the channel conversion holds.
STRIP_ROWS = 256


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB as float32, equal to skimage's
    `rgb2hsv(rgb.astype(np.float32) / 255)[..., 1]` (same float32 operations: /255 is
    monotonic, so the channel max and min commute with it) without its float copies
    and hue."""
    out = np.zeros(rgb.shape[:2], np.float32)
    for y in range(0, rgb.shape[0], STRIP_ROWS):
        part = rgb[y : y + STRIP_ROWS]
        top = part.max(axis=-1).astype(np.float32) / 255.0
        delta = top - part.min(axis=-1).astype(np.float32) / 255.0
        np.divide(delta, top, out=out[y : y + STRIP_ROWS], where=delta != 0)
    return out


def stain_channel(rgb: np.ndarray, channel: str) -> np.ndarray:
    """A 0-1 image that is high on stained tissue and low on glass (float32)."""
    if channel == "saturation":
        return hsv_saturation(rgb)
    if channel not in ("od", "gray"):
        raise ValueError(f"unknown mask channel '{channel}' (saturation, od, gray)")
    out = np.empty(rgb.shape[:2], np.float32)
    for y in range(0, rgb.shape[0], STRIP_ROWS):  # per pixel, so strips change nothing
        out[y : y + STRIP_ROWS] = _pixel_channel(rgb[y : y + STRIP_ROWS], channel)
    return out


def _pixel_channel(rgb: np.ndarray, channel: str) -> np.ndarray:
    rgb = rgb.astype(np.float32) / 255.0
    if channel == "od":
        # Mean optical density, scaled so OD 1.5 (dense stain) maps to 1.
        od = -np.log(np.clip(rgb, 1 / 255, 1.0))
        return np.clip(od.mean(axis=-1) / 1.5, 0.0, 1.0)
    return 1.0 - color.rgb2gray(rgb)


def otsu_tissue(rgb: np.ndarray, mpp: float, opts: MaskOptions) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a thumbnail at `mpp` and the threshold used."""
    chan = stain_channel(rgb, opts.channel)
    sigma = opts.smoothing_um / mpp
    if sigma > 0:
        # In place: each 1-d pass reads a whole line into ndimage's buffer before writing.
        chan = filters.gaussian(chan, sigma=sigma, preserve_range=True, out=chan)
    if float(chan.max() - chan.min()) < 1e-6:
        threshold = max(float(chan.max()) + 1e-6, opts.min_threshold)
    else:
        threshold = max(float(filters.threshold_otsu(chan)), opts.min_threshold)
    mask = chan > threshold
    del chan  # 4 bytes a pixel that the morphology's labels would sit beside
    radius = round(opts.closing_um / mpp)
    if radius > 0 and mask.any():
        mask = morphology.closing(mask, morphology.disk(radius))
    px_area = mpp * mpp
    min_obj = math.ceil(opts.min_tissue_um2 / px_area)
    max_hole = math.ceil(opts.max_hole_um2 / px_area)
    if min_obj > 0:
        mask = remove_small_objects(mask, min_obj)
    if max_hole > 0:
        mask = fill_small_holes(mask, max_hole)
    return mask, threshold


def label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels per label 0..count, counted in strips: `np.bincount` of the whole image
    would first copy the int32 labels to int64 (8 bytes a pixel)."""
    sizes = np.zeros(count + 1, np.int64)
    for y in range(0, labels.shape[0], STRIP_ROWS):
        sizes += np.bincount(labels[y : y + STRIP_ROWS].ravel(), minlength=count + 1)
    return sizes


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """`mask` without its 4-connected objects of at most `max_size` pixels: skimage's
    `morphology.remove_small_objects(mask, max_size=max_size)`, with int32 labels and
    counts in strips instead of its int64 copy of the labels."""
    labels = np.zeros(mask.shape, np.int32)
    count = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, 1), output=labels)
    small = label_sizes(labels, count) <= max_size
    small[0] = False  # background stays background
    out = mask.copy()
    for y in range(0, mask.shape[0], STRIP_ROWS):
        out[y : y + STRIP_ROWS][small[labels[y : y + STRIP_ROWS]]] = False
    return out


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """`mask` with its holes of at most `max_size` pixels filled.

    A hole is background enclosed by tissue: background that touches the image border
    is glass around the tissue, whatever its size, so an image with little or no
    tissue never fills up. (A real hole cut by the border stays open.)
    """
    labels, count = ndimage.label(~mask)  # 4-connected, as skimage's remove_small_holes
    if count == 0:
        return mask
    fill = label_sizes(labels, count) <= max_size
    fill[0] = False
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[np.unique(border)] = False
    return mask | fill[labels]


def check_thumbnail_size(slide: Slide, thumbnail_mpp: float) -> None:
    """Refuse a thumbnail larger than THUMBNAIL_MAX_PIXELS before reading it."""
    w, h = slide.size_at(thumbnail_mpp)
    if w * h > THUMBNAIL_MAX_PIXELS:
        w0, h0 = slide.dimensions
        raise SlideError(
            f"the slide ({w0} x {h0} px at {slide.mpp:g} µm/px) gives a {w} x {h} px "
            f"thumbnail at config field 'mask.thumbnail_mpp' {thumbnail_mpp:g}, more than "
            f"the {THUMBNAIL_MAX_PIXELS / 1e6:.4g} Mpx a mask thumbnail may have; check "
            "the mpp, or raise mask.thumbnail_mpp",
            slide.sample,
            str(slide.path),
        )


def user_mask_limit(shape: tuple[int, int]) -> int:
    """Most pixels a user mask for a thumbnail of `shape` may have (see USER_MASK_MAX_FINER)."""
    finer = shape[0] * shape[1] * USER_MASK_MAX_FINER**2
    return min(max(finer, USER_MASK_MIN_LIMIT), PLAIN_IMAGE_MAX_PIXELS)


def load_user_mask(path: str | Path, shape: tuple[int, int], slide: Slide) -> np.ndarray:
    """Read a user mask image (non-zero = tissue) and resize it to the thumbnail `shape`."""
    path = Path(path)
    if not path.is_file():
        raise SlideError("user mask (sheet field 'mask') not found", slide.sample, str(path))
    limit = user_mask_limit(shape)
    problem = image_pixel_problem(path, limit, "user mask (sheet field 'mask')")
    if problem:
        raise SlideError(
            f"{problem}; the mask is used at {shape[1]} x {shape[0]} px, so save it smaller",
            slide.sample,
            str(path),
        )
    try:
        with Image.open(path) as img:
            img.load()
            user = img.convert("L")
    except (OSError, Image.DecompressionBombError) as exc:
        raise SlideError(
            f"user mask is not a readable image ({exc})", slide.sample, str(path)
        ) from exc
    w0, h0 = slide.dimensions
    ratio_slide, ratio_mask = w0 / h0, user.width / user.height
    if abs(ratio_mask / ratio_slide - 1) > MAX_ASPECT_MISMATCH:
        raise SlideError(
            f"user mask aspect ratio {user.width}x{user.height} ({ratio_mask:.3f}) does not match "
            f"the slide's {w0}x{h0} ({ratio_slide:.3f}); is it the mask of another slide?",
            slide.sample,
            str(path),
        )
    resized = user.resize((shape[1], shape[0]), resample=Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def compute_tissue_mask(
    slide: Slide, opts: MaskOptions, user_mask: str | Path | None = None
) -> TissueMask:
    """Tissue mask of `slide` (Otsu, or the user's mask resized) with its metadata."""
    check_thumbnail_size(slide, opts.thumbnail_mpp)
    thumb = slide.thumbnail(opts.thumbnail_mpp)
    h, w = thumb.shape[:2]
    if user_mask:
        mask, method, threshold = load_user_mask(user_mask, (h, w), slide), "user", None
    else:
        mask, threshold = otsu_tissue(thumb, opts.thumbnail_mpp, opts)
        method = "otsu"
    w0, h0 = slide.dimensions
    fraction = float(mask.mean()) if mask.size else 0.0
    # Area in mm² from level-0 pixels per mask pixel, so rounding of the thumbnail size
    # does not bias it.
    sx, sy = w0 / w, h0 / h
    area_mm2 = float(mask.sum()) * sx * sy * slide.mpp**2 / 1e6
    warnings = list(slide.warnings)
    if not mask.any():
        msg = f"sample '{slide.sample}': no tissue found in '{slide.path}'"
        log.warning(msg)
        warnings.append("no tissue found")
    meta = {
        "sample": slide.sample,
        "slide_path": str(slide.path),
        "slide_format": slide.format,
        "slide_dimensions": [w0, h0],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "thumbnail_mpp": opts.thumbnail_mpp,
        "mask_shape": [h, w],
        "mask_scale": [sx, sy],
        "tissue_fraction": round(fraction, 6),
        "tissue_area_mm2": round(area_mm2, 6),
        "method": method,
        "channel": opts.channel if method == "otsu" else None,
        "threshold": None if threshold is None else round(threshold, 6),
        "options": opts.__dict__,
        "warnings": warnings,
    }
    return TissueMask(mask=mask, thumbnail=thumb, overlay=overlay_picture(slide, mask), meta=meta)


def run(
    slide_path: str | Path,
    outputs: tuple[str | Path, str | Path, str | Path, str | Path],
    options: MaskOptions,
    *,
    sample: str,
    mpp: float | None = None,
    user_mask: str | Path | None = None,
) -> TissueMask:
    """The mask_tissue stage: mask one slide and write `outputs` (mask.png,
    thumbnail.png, overlay.png, mask.json) through `histoflow.io.mask_files`."""
    with open_slide(slide_path, sample=sample, mpp=mpp) as slide:
        result = compute_tissue_mask(slide, options, user_mask=user_mask or None)
    write_mask_files(result, *outputs)
    return result


def overlay_picture(slide: Slide, mask: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """QC picture: the slide at up to `max_side` px with the tissue outline in green.

    Drawn finer than the mask thumbnail (a few hundred pixels at most for a small
    slide) so a person can judge the outline against the tissue.
    """
    w0, h0 = slide.dimensions
    mpp = max(slide.mpp, max(w0, h0) * slide.mpp / max_side)
    rgb = slide.thumbnail(mpp)
    big = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (rgb.shape[1], rgb.shape[0]), resample=Image.Resampling.NEAREST
    )
    return overlay(rgb, np.asarray(big) > 0, width=max(2, round(max(rgb.shape) / 400)))


def overlay(thumbnail: np.ndarray, mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The thumbnail with the mask outline drawn in green; tissue-free area slightly dimmed."""
    out = thumbnail.copy()
    edges = segmentation.find_boundaries(mask, mode="inner")
    if width > 1:
        edges = morphology.dilation(edges, morphology.disk(width // 2))
    out[~mask] = (out[~mask] * 0.75).astype(np.uint8)
    out[edges] = OUTLINE_RGB
    return out
