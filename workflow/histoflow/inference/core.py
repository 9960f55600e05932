"""The inference core shared by dense (`infer_patches`) and tile (`infer_tiles`) inference.

Both stages read rectangles of a slide at the model's resolution through a torch
DataLoader, normalise them on the device and run the model under
`torch.inference_mode`. What they share lives here: the device choice, the CUDA
determinism switches, the bound on the main process's heap, the process-safe region
dataset, the loader and the normalised forward loop.
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histoflow.errors import ConfigError
from histoflow.inference.threads import bound_heap
from histoflow.slide import Slide, open_slide

log = logging.getLogger(__name__)

PRECISIONS = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Batches each loader worker keeps ready: enough to hide a slow read behind the model.
PREFETCH_BATCHES = 4
# A loader worker that dies inside a queue's feeder thread leaves the job waiting for
# its batch for ever; no read of one batch takes this long, so waiting longer is a hang.
LOADER_TIMEOUT_S = 600
# Loader workers hand each batch over through an AF_UNIX socket that multiprocessing
# makes at <temp dir>/pymp-XXXXXXXX/listener-XXXXXXXX; such paths hold at most 107 bytes.
SOCKET_PATH_MAX = 107
SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")
SHORT_TEMP_DIRS = ("/tmp", "/dev/shm", "/var/tmp")


def pick_device(name: str, field: str) -> torch.device:
    """The torch device `name` ('auto': CUDA when available); `field` names the config key."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config field '{field}': '{name}' asked for, but no CUDA GPU")
    return torch.device(name)


def prepare_process(device: torch.device) -> None:
    """Set up the process for a run on `device`: heap bound and CUDA determinism."""
    bound_heap()
    if device.type == "cuda":
        # CPU inference kernels are deterministic already, and this call imports torch's
        # compiler stack, so it is paid only where it matters.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def open_one_slide(path: str, sample: str | None, mpp: float | None) -> list[Slide]:
    """A slide as a one-sample list, the shape `SlideRegions` expects of its opener."""
    return [open_slide(path, sample=sample, mpp=mpp)]


def slide_opener(path: str, sample: str | None, mpp: float | None) -> Callable[[], list[Slide]]:
    """A picklable opener of one slide, for `SlideRegions`."""
    return partial(open_one_slide, str(path), sample, mpp)


# Widest band of neighbouring patches read at once (model pixels): ~3 MB of RGB a worker.
RUN_MAX_WIDTH = 4096
# Decoded-tile cache of a reading process: the rows of tiles under two rows of patches
# across the slide, within this bound.
TILE_CACHE_MAX_BYTES = 256 * 2**20


def tile_cache_bytes(slide: Slide, mpp: float, patch_height: int) -> int:
    """RGBA bytes of the level's tiles under two rows of `patch_height` patches read at
    `mpp` across the whole slide (plus a tile row of slack), capped."""
    scale = mpp / slide.mpp
    level = slide.best_level(scale)
    width, _ = slide.level_dimensions[level]
    rows = 2 * patch_height * scale / slide.level_downsamples[level] + 512
    return int(min(width * rows * 4, TILE_CACHE_MAX_BYTES))


def plan_runs(regions: np.ndarray, max_width: int = RUN_MAX_WIDTH) -> np.ndarray:
    """(N, 5) int: for each region, the box of its run, read once and cut into patches.

    A run is a sequence of consecutive regions of one sample and row (same y and
    height) that overlap or touch in x, at most `max_width` wide: with HoVer-Net's
    256 px read for 164 px of output, each pixel of a row is then read once instead of
    2.4 times. Planned on the whole grid, so a resumed job cuts the same runs.
    """
    regions = np.asarray(regions, np.int64)
    runs = regions.copy()
    start, end = 0, 0  # the open run: its first region and its right edge
    for i, (s, x, y, w, h) in enumerate(regions.tolist()):
        s0, x0, y0, _, h0 = regions[start]
        if i and s == s0 and y == y0 and h == h0 and x <= end and x + w - x0 <= max_width:
            end = max(end, x + w)
            continue
        runs[start:i, 1], runs[start:i, 3] = x0, end - x0
        start, end = i, x + w
    if len(regions):
        runs[start:, 1], runs[start:, 3] = regions[start, 1], end - regions[start, 1]
    return runs


class SlideRegions(Dataset):
    """Rectangles of an image's samples as (h, w, 3) uint8 arrays, read at `mpp`.

    `opener()` returns the image's samples (one slide, or the pages of a stack); it is
    called once in each process that reads, so every DataLoader worker has its own
    handles. `regions` is (N, 5) int: sample index, x, y, width, height at `mpp`.
    `runs` (optional, same shape, `plan_runs`) is the box each region is cut from:
    each process keeps its last run, and the loader's batches are consecutive regions,
    so a run is read about once; `cache_bytes` sizes each handle's decoded-tile cache
    (`tile_cache_bytes`), so the next row of runs, which overlaps this one, decodes no
    tile again.
    """

    def __init__(
        self,
        opener: Callable[[], Sequence[Slide]],
        regions: np.ndarray,
        mpp: float,
        runs: np.ndarray | None = None,
        cache_bytes: int | None = None,
    ):
        self.opener, self.regions, self.mpp = opener, np.asarray(regions, np.int64), mpp
        self.runs = None if runs is None else np.asarray(runs, np.int64)
        self.cache_bytes = cache_bytes
        self._samples: Sequence[Slide] | None = None
        self._pid: int | None = None
        self._run: tuple[tuple[int, ...], np.ndarray] | None = None

    def __len__(self) -> int:
        """The number of regions."""
        return len(self.regions)

    def _handles(self) -> Sequence[Slide]:
        if self._samples is None or self._pid != os.getpid():
            self._samples = self.opener()
            self._pid = os.getpid()
            self._run = None
            for handle in self._samples if self.cache_bytes else ():
                handle.use_tile_cache(self.cache_bytes)
        return self._samples

    def __getitem__(self, i: int) -> np.ndarray:
        """The pixels of region `i`."""
        s, x, y, w, h = (int(v) for v in self.regions[i])
        handles = self._handles()
        if self.runs is None:
            return np.ascontiguousarray(handles[s].read_region(x, y, w, h, self.mpp))
        key = tuple(int(v) for v in self.runs[i])
        if self._run is None or self._run[0] != key:
            rs, rx, ry, rw, rh = key
            self._run = key, handles[rs].read_region(rx, ry, rw, rh, self.mpp)
        rx, ry = key[1], key[2]
        return np.ascontiguousarray(self._run[1][y - ry : y - ry + h, x - rx : x - rx + w])


def stack_regions(batch: list[np.ndarray]) -> torch.Tensor:
    """Collate (h, w, 3) uint8 regions into one (B, h, w, 3) tensor (module level: picklable)."""
    return torch.from_numpy(np.stack(batch))


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Batches of `dataset` in order, read by `num_workers` processes (0: this one)."""
    if num_workers:
        short_socket_dir()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=stack_regions,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=PREFETCH_BATCHES if num_workers else None,
        timeout=LOADER_TIMEOUT_S if num_workers else 0,
    )


def short_socket_dir() -> None:
    """Point this process's temp folder (inherited by forked loader workers) at a short
    one when the current one is too deep for the workers' sockets: a deep TMPDIR (a job
    folder several levels down) otherwise makes every worker fail with "AF_UNIX path too
    long". Only sockets and their empty folders go there."""
    current = tempfile.gettempdir()
    if len(current.encode()) + SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return
    for folder in SHORT_TEMP_DIRS:
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            log.info(
                "temp folder %s is %d bytes long, too long for loader sockets: using %s",
                current,
                len(current.encode()),
                folder,
            )
            tempfile.tempdir = folder
            return
    raise ConfigError(
        f"TMPDIR {current!r} is too long for the loader workers' sockets "
        f"({SOCKET_PATH_MAX - SOCKET_SUFFIX} bytes at most) and none of "
        f"{', '.join(SHORT_TEMP_DIRS)} is writable: set a shorter TMPDIR "
        "or no loader workers (inference.num_workers or tiles.num_workers: 0)"
    )


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def memory_format(name: str, device: torch.device) -> torch.memory_format:
    """The layout of model input and weights for config value `name` on `device`.

    'auto' is channels_last on CPU and CUDA, where convolutions have a fast path in that
    layout (oneDNN, cuDNN) and a contiguous NCHW input makes the CPU reorder every
    batch; other devices keep contiguous tensors.
    """
    if name == "auto":
        name = "channels_last" if device.type in ("cpu", "cuda") else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def prepare_model(
    model: torch.nn.Module, device: torch.device, layout: torch.memory_format
) -> torch.nn.Module:
    """`model` on `device` with its 4-d weights in `layout` (TorchScript and exported
    modules included: only the parameters' strides change, never their values)."""
    return model.to(device=device, memory_format=layout)


def compile_model(
    model: torch.nn.Module, example: torch.Tensor, precision: str = "none"
) -> torch.nn.Module:
    """`torch.compile(model)`, tried on `example` (a batch of the job's shape on the
    model's device), or `model` itself with a warning saying why where compiling does not
    work (TorchScript, no compiler toolchain, an unsupported operation)."""
    if isinstance(model, torch.jit.ScriptModule):
        log.warning(
            "inference.compile: a TorchScript model cannot go through torch.compile; "
            "running it as TorchScript"
        )
        return model
    compiled = torch.compile(model)
    autocast = PRECISIONS[precision] if example.device.type == "cuda" else None
    try:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None),
        ):
            compiled(example)
    except Exception as exc:  # torch.compile fails in many ways (backend, toolchain, op)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        log.warning(
            "inference.compile: torch.compile does not work for this model here "
            "(%s: %s); running it uncompiled",
            type(exc).__name__,
            first,
        )
        return model
    log.info("inference.compile: model compiled with torch.compile")
    return compiled


class Normaliser:
    """Turns a (B, h, w, 3) uint8 batch into the model's (B, 3, h, w) float input on `device`.

    `spec` is the card's `input` section: x / scale, then (x - mean) / std per channel,
    computed in place in one float buffer per batch shape, reused from batch to batch
    (a fresh buffer per batch is a fresh mapping of pages to fault in). `layout`
    (`torch.channels_last` or `torch.contiguous_format`) is the buffer's memory layout;
    `contiguous=False` keeps the channels-last view of the batch (the layout tile models
    have always received). The same arithmetic in either layout, so the values are the
    same. `stain` (histoflow.stain_norm.transfer.StainTransfer) restains the batch first.
    """

    def __init__(
        self,
        spec: dict,
        device: torch.device,
        contiguous: bool = False,
        layout: torch.memory_format | None = None,
        stain: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.device = device
        self.stain = stain
        self.layout = layout or (torch.contiguous_format if contiguous else torch.channels_last)
        self.mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
        self.scale = float(spec["scale"])
        self._buffer: torch.Tensor | None = None

    def _buffer_for(self, shape: torch.Size) -> torch.Tensor:
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = torch.empty(
                shape, dtype=torch.float32, device=self.device, memory_format=self.layout
            )
        return self._buffer

    @property
    def buffer(self) -> torch.Tensor | None:
        """The reused input buffer (None before the first batch)."""
        return self._buffer

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The normalised model input of `batch` (valid until the next call)."""
        x = batch.to(self.device, non_blocking=self.device.type == "cuda").permute(0, 3, 1, 2)
        out = self._buffer_for(x.shape)
        out.copy_(x)
        if self.stain is not None:
            self.stain(out)  # restained in place, still in 0..255
        return out.div_(self.scale).sub_(self.mean).div_(self.std)


def cpu_usage() -> str:
    """User and system CPU seconds and minor page faults of this process and its joined
    children (the loader workers): system time far above a tenth of user time, with
    millions of faults, means buffers are allocated per batch."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return (
        f"CPU user {me.ru_utime + kids.ru_utime:.1f} s, system "
        f"{me.ru_stime + kids.ru_stime:.1f} s, minor page faults {me.ru_minflt + kids.ru_minflt}"
    )


@dataclass
class ForwardStats:
    """Where a forward loop's wall time went: waiting for the loader vs everything else."""

    batches: int = 0
    patches: int = 0
    loader_wait_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> str:
        """One log line: patches, wall, loader wait and its share."""
        share = self.loader_wait_s / self.wall_s if self.wall_s else 0.0
        return (
            f"{self.patches} patches in {self.batches} batches, {self.wall_s:.1f} s; "
            f"waiting for the loader {self.loader_wait_s:.1f} s ({share:.0%})"
        )


def forward_batches(
    model: torch.nn.Module,
    loader: DataLoader,
    normalise: Normaliser,
    precision: str = "none",
    stats: ForwardStats | None = None,
) -> Iterator[tuple[int, object]]:
    """(batch length, model output) per batch, under inference mode.

    `precision` ('none', 'bf16', 'fp16') runs the model under CUDA autocast; it is
    ignored off CUDA. The caller's handling of each output runs in inference mode too.
    `stats`, when given, collects the loader wait (time blocked on the next batch).
    """
    autocast = PRECISIONS[precision] if normalise.device.type == "cuda" else None
    stats = stats if stats is not None else ForwardStats()
    start = time.perf_counter()
    with torch.inference_mode():
        batches = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            stats.loader_wait_s += time.perf_counter() - t0
            if batch is None:
                break
            x = normalise(batch)
            stats.batches += 1
            stats.patches += len(batch)
            if autocast is None:
                out = model(x)
            else:
                with torch.autocast("cuda", dtype=autocast):
                    out = model(x)
            yield len(batch), out
            stats.wall_s = time.perf_counter() - start
    stats.wall_s = time.perf_counter() - start
