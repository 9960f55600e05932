"""Hostile input, engine level: every fault ends in one line naming sample and file or field.

Covers failures outside histoflow's own errors (disk full, out of memory, other
OSErrors, bugs) through the scripts' runner; decompression bombs as slide, user mask
and TIFF page; sample IDs Snakemake or the file system would refuse; blank and tiny
images; implausible mpp from the sheet or the file.
"""

import errno
import io
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import write_sheet
from histoflow import slide as slide_module
from histoflow.config import MPP_RANGE, load_sample_sheet, load_schema, sample_id_problem
from histoflow.errors import ConfigError, SlideError
from histoflow.io import atomic
from histoflow.paths import EXPORTS, TILE_STORES
from histoflow.slide import PLAIN_IMAGE_MAX_PIXELS, image_pixel_problem, open_slide
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png, write_slide
from histoflow.tiles.images import open_samples
from histoflow.tissue import (
    MaskOptions,
    check_thumbnail_size,
    compute_tissue_mask,
    fill_small_holes,
    load_user_mask,
    otsu_tissue,
    user_mask_limit,
)
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BOMB_SIDE = 100_000


# -- bomb files ------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid PNG header (correct CRCs) declaring side x side RGB px, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b""))
    path.write_bytes(data + _chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path, side: int = BOMB_SIDE, pages: int = 1) -> Path:
    """A little-endian stripped TIFF whose IFDs declare side x side 8-bit gray px."""
    entries = [
        (256, 4, side),  # ImageWidth, LONG
        (257, 4, side),  # ImageLength
        (258, 3, 8),  # BitsPerSample, SHORT
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: black is zero
        (273, 4, 8),  # StripOffsets: the header (no real data)
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, side),  # RowsPerStrip
        (279, 4, 8),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for page in range(pages):
        start = 8 + page * ifd_size
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            fmt = "<HHIHH" if kind == 3 else "<HHII"
            out += struct.pack(fmt, tag, kind, 1, value, *((0,) if kind == 3 else ()))
        out += struct.pack("<I", start + ifd_size if page < pages - 1 else 0)
    path.write_bytes(bytes(out))
    return path


def tiled_tiff_bomb(path: Path, side: int = BOMB_SIDE, tile: int = 65536) -> Path:
    """A tiled TIFF (OpenSlide's generic-tiff) declaring side x side px in huge tiles."""
    count = (-(-side // tile)) ** 2
    data = 8 + 2 + 12 * 10 + 4  # header, then one IFD of 10 entries
    entries = [
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (277, 3, 1, 1),
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, count, data),  # TileOffsets (all at the same 8 bytes)
        (325, 4, count, data + 4 * count),  # TileByteCounts
    ]
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, n, value in entries:
        out += struct.pack(
            "<HHIHH" if kind == 3 else "<HHII", tag, kind, n, value, *(0,) * (kind == 3)
        )
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{count}I", *[data] * count) + struct.pack(f"<{count}I", *[8] * count)
    path.write_bytes(bytes(out))
    return path


def test_bomb_files_are_small_and_declare_huge_sizes(tmp_path):
    png = png_bomb(tmp_path / "bomb.png")
    assert png.stat().st_size < 100
    tif = tiff_bomb(tmp_path / "bomb.tif")
    assert tif.stat().st_size < 200
    for path in (png, tif):
        assert "100000 x 100000 px" in image_pixel_problem(path, PLAIN_IMAGE_MAX_PIXELS, "image")


@pytest.mark.parametrize("maker", [png_bomb, tiff_bomb])
def test_bomb_as_slide_is_one_error_naming_sample_and_file(tmp_path, maker):
    bomb = maker(tmp_path / f"bomb{'.png' if maker is png_bomb else '.tif'}")
    with pytest.raises(SlideError) as err:
        open_slide(bomb, sample="S1", mpp=0.5)
    message = str(err.value)
    assert message.startswith(f"sample 'S1', file '{bomb}': ")
    assert "100000 x 100000 px" in message and "decompression bomb" in message
    assert "\n" not in message


def test_tiled_tiff_bomb_never_reaches_openslide(tmp_path):
    # OpenSlide aborts the whole process (GLib: failed to allocate 16 GiB) on such a
    # tile, so the check runs in a child process.
    bomb = tiled_tiff_bomb(tmp_path / "tiled.tif")
    assert bomb.stat().st_size < 300
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from histoflow.slide import open_slide\n"
        "from histoflow.errors import SlideError\n"
        "try: open_slide(sys.argv[1], sample='S1', mpp=0.5)\n"
        "except SlideError as e: print(e)"
    )
    engine = str(Path(slide_module.__file__).parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bomb), engine], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"sample 'S1', file '{bomb}': TIFF page 0 has tiles of 65536")
    assert "decompression bomb" in proc.stdout


def test_large_reads_go_in_bands_with_the_same_pixels(tmp_path, monkeypatch):
    rgb, _ = tissue_blocks(300, 260, seed=6)
    path = write_png(tmp_path / "roi.png", rgb)
    with open_slide(path, sample="S1", mpp=0.5) as slide:
        whole = slide.thumbnail(1.5)
        calls = []
        read = slide._osr.read_region
        monkeypatch.setattr(slide._osr, "read_region", lambda *a: calls.append(a[2]) or read(*a))
        monkeypatch.setattr(slide_module, "READ_MAX_PIXELS", 50 * 50)
        banded = slide.thumbnail(1.5)
    assert len(calls) > 1 and max(w * h for w, h in calls) <= 50 * 50 * 2
    assert banded.shape == whole.shape
    assert np.abs(banded.astype(int) - whole).max() <= 1


def test_large_plain_tiff_is_read_by_strips_with_the_same_pixels(tmp_path, monkeypatch):
    import tifffile
    from histoflow.plain_tiff import StripTiff

    rgb, _ = tissue_blocks(600, 500, seed=7)
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, rgb, rowsperstrip=16, compression="zlib")
    with open_slide(path, sample="S1", mpp=0.5) as slide:
        assert not isinstance(slide._osr, StripTiff)  # small: Pillow decodes it whole
        expected = [slide.read_region(*box) for box in ((-5, 7, 90, 60, 0.5), (0, 0, 80, 70, 2))]
    monkeypatch.setattr(slide_module, "PLAIN_IMAGE_MAX_PIXELS", 1000)
    with open_slide(path, sample="S1", mpp=0.5) as slide:
        assert isinstance(slide._osr, StripTiff) and slide.dimensions == rgb.shape[1::-1]
        got = [slide.read_region(*box) for box in ((-5, 7, 90, 60, 0.5), (0, 0, 80, 70, 2))]
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)


def test_thumbnail_too_large_for_the_mask_stage_is_refused(tmp_path):
    path = write_png(tmp_path / "roi.png", np.full((100, 100, 3), 200, np.uint8))
    with open_slide(path, sample="S1", mpp=100) as slide:
        check_thumbnail_size(slide, 4.0)  # 2500 x 2500: fine
        with pytest.raises(SlideError, match=r"sample 'S1', file .*'mask.thumbnail_mpp' 0.05"):
            check_thumbnail_size(slide, 0.05)  # 200000 x 200000


def test_bomb_pages_of_a_tiff_stack_are_refused(tmp_path):
    bomb = tiff_bomb(tmp_path / "stack.tif", pages=2)
    with pytest.raises(SlideError, match=r"sample 'S1', file '.*stack.tif': .*100000 x 100000"):
        open_samples(bomb, sample="S1", mpp=0.5)


def test_bomb_as_user_mask_is_one_error_naming_sample_and_file(tmp_path):
    rgb, _ = tissue_blocks(200, 200, seed=1)
    slide_path = write_png(tmp_path / "roi.png", rgb)
    bomb = png_bomb(tmp_path / "mask.png")
    with open_slide(slide_path, sample="S1", mpp=0.5) as slide, pytest.raises(SlideError) as err:
        load_user_mask(bomb, (25, 25), slide)
    message = str(err.value)
    assert message.startswith(f"sample 'S1', file '{bomb}': user mask (sheet field 'mask')")
    assert "100000 x 100000 px" in message and "decompression bomb" in message


def test_pillow_guard_is_on_and_ordinary_images_pass(tmp_path):
    assert Image.MAX_IMAGE_PIXELS == PLAIN_IMAGE_MAX_PIXELS
    rgb = np.full((200, 300, 3), 200, np.uint8)
    assert image_pixel_problem(write_png(tmp_path / "ok.png", rgb), 300 * 200, "image") is None
    assert "300 x 200 px" in image_pixel_problem(tmp_path / "ok.png", 300 * 200 - 1, "image")
    # The user-mask limit follows the thumbnail the mask is used at, within fixed bounds.
    assert user_mask_limit((10, 10)) == 8192 * 8192
    assert user_mask_limit((1000, 1200)) == 1000 * 1200 * 256
    assert user_mask_limit((10**5, 10**5)) == PLAIN_IMAGE_MAX_PIXELS


# -- sample IDs ------------------------------------------------------------------------
def _sheet_error(tmp_path, sample: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_sample_sheet(write_sheet(tmp_path / "s.tsv", [{"sample": sample, "path": "x.svs"}]))
    return str(err.value)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("A" * 300, "field 'sample': ID is 300 characters long, more than 128"),
        ("S" + "0" * 20, "field 'sample': ID 'S00000000000000000000' ends in '0' repeated 20"),
        ("x" + "ab" * 25, "ends in 'ab' repeated 25 times; Snakemake refuses"),
        (".hidden", "field 'sample'"),
        ("-rf", "field 'sample'"),
        ("CON", "field 'sample': 'CON' is a name Windows reserves"),
        ("nul.txt", "field 'sample': 'nul.txt' is a name Windows reserves"),
    ],
)
def test_sheet_refuses_ids_snakemake_or_the_file_system_would(tmp_path, sample, expected):
    message = _sheet_error(tmp_path, sample)
    shown = sample if len(sample) <= 40 else f"{sample[:40]}…"
    assert f"sample sheet '{tmp_path / 's.tsv'}' line 2 (sample '{shown}')" in message
    assert expected in message


def test_periodic_rule_is_snakemakes():
    from snakemake.io import PeriodicityDetector

    detector = PeriodicityDetector()
    ids = ["S" + "0" * n for n in (18, 19, 20, 21, 60, 127)] + [
        "ab" * 19,
        "ab" * 20,
        "x" + "abc" * 20,
        "abc" * 19 + "ab",
        "S0001",
        "demo-1.2",
    ]
    for sample in ids:
        ours = sample_id_problem(sample) is not None
        assert ours == (detector.is_periodic(sample) is not None), sample


def test_longest_accepted_id_fits_every_name_the_workflow_builds(monkeypatch):
    limit = load_schema("samples.schema.yaml")["properties"]["sample"]["maxLength"]
    sample = ("0123456789" * 20)[:limit]
    assert sample_id_problem(sample) is None
    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "h" * 64)  # POSIX HOST_NAME_MAX
    names = [f.format(sample=sample) for f in [*EXPORTS.values(), *TILE_STORES.values()]]
    pid = "4194304"  # Linux's largest pid
    names += [f".{n}.{atomic.TEMP_MARK}-{pid}-journal" for n in names]
    names += [f"{atomic._job_prefix(kind, sample)}{pid}.999" for kind in ("levels", "merge")]
    assert max(len(n.encode()) for n in names) <= 255


# -- blank and tiny images -------------------------------------------------------------
OPTS = MaskOptions.from_config()


@pytest.mark.parametrize("side", [1, 2, 35, 70, 280])
def test_blank_or_tiny_thumbnail_is_no_tissue(side):
    blank = np.full((side, side, 3), 246, np.uint8)
    mask, _ = otsu_tissue(blank, OPTS.thumbnail_mpp, OPTS)
    assert not mask.any()


def test_blank_and_one_pixel_slides_report_zero_tissue(tmp_path):
    for name, shape in (("blank.png", (280, 280, 3)), ("one.png", (1, 1, 3))):
        path = write_png(tmp_path / name, np.full(shape, 246, np.uint8))
        with open_slide(path, sample="S1", mpp=0.5) as slide:
            meta = compute_tissue_mask(slide, OPTS).meta
        assert meta["tissue_fraction"] == 0 and meta["tissue_area_mm2"] == 0, name
        assert "no tissue found" in meta["warnings"]


def test_holes_enclosed_by_tissue_fill_and_background_at_the_border_does_not():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[12:16, 12:16] = False  # a 16 px hole inside the tissue
    filled = fill_small_holes(mask, 20)
    assert filled[5:25, 5:25].all()
    assert not filled[25:].any() and not filled[:, 25:].any()  # glass stays glass
    assert fill_small_holes(mask, 10)[12:16, 12:16].sum() == 0  # bigger than allowed
    assert not fill_small_holes(np.zeros((3, 3), bool), 100).any()
    assert fill_small_holes(np.ones((1, 1), bool), 100).all()


# -- implausible mpp -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e-9", "0.01", "200", "inf"])
def test_sheet_mpp_outside_a_microscopes_range_is_refused(tmp_path, value):
    rows = [{"sample": "S1", "path": "x.svs", "mpp": value}]
    with pytest.raises(ConfigError) as err:
        load_sample_sheet(write_sheet(tmp_path / "s.tsv", rows))
    message = str(err.value)
    assert "line 2 (sample 'S1'): field 'mpp'" in message
    assert "outside what a microscope produces (0.05 to 100 µm/px)" in message


def test_schema_mpp_bounds_are_the_engines():
    mpp = load_schema("samples.schema.yaml")["properties"]["mpp"]
    assert (mpp["minimum"], mpp["maximum"]) == MPP_RANGE


@pytest.mark.parametrize("value", [1e-9, 0.04, 101.0, float("nan")])
def test_engine_refuses_an_implausible_sheet_mpp(tmp_path, value):
    path = write_png(tmp_path / "roi.png", np.full((20, 20, 3), 200, np.uint8))
    with pytest.raises(SlideError, match=r"^sample 'S1', file '.*roi.png': sheet field 'mpp': "):
        open_slide(path, sample="S1", mpp=value)


def test_tiff_stack_pages_refuse_an_implausible_mpp(tmp_path):
    import tifffile

    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        for _ in range(2):
            tif.write(np.full((20, 30, 3), 200, np.uint8))
    assert len(open_samples(path, sample="S1", mpp=0.5)) == 2
    with pytest.raises(SlideError, match=r"^sample 'S1', file '.*stack.tif': sheet field 'mpp'"):
        open_samples(path, sample="S1", mpp=1e-9)


def test_implausible_file_mpp_is_an_error_naming_the_field(tmp_path):
    rgb, _ = tissue_blocks(256, 256, seed=4)
    path = write_slide(tmp_path / "tiny_mpp.tif", rgb, mpp=1e-4)
    with pytest.raises(SlideError) as err:
        open_slide(path, sample="S1")
    message = str(err.value)
    assert message.startswith(f"sample 'S1', file '{path}': the file's resolution metadata")
    assert "outside what a microscope produces" in message and "'mpp' column" in message
    # The sheet may override it (with a warning, as it is far from the file's value).
    with open_slide(path, sample="S1", mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.warnings


def test_sheet_mpp_far_from_the_files_warns_naming_sample_and_field(tmp_path, caplog):
    rgb, _ = tissue_blocks(256, 256, seed=5)
    path = write_slide(tmp_path / "s.tif", rgb, mpp=0.25)
    with caplog.at_level(logging.WARNING), open_slide(path, sample="S1", mpp=20) as slide:
        assert slide.mpp == 20
    warning = f"sample 'S1', file '{path}': sheet field 'mpp' 20 µm/px is 80 x the file's own 0.25"
    assert any(warning in r.getMessage() for r in caplog.records), caplog.text
    assert any("sheet field 'mpp' 20" in w for w in slide.warnings)
    caplog.clear()
    with open_slide(path, sample="S1", mpp=0.3) as slide:
        assert not slide.warnings
    assert not caplog.records


# -- failures outside histoflow's own errors: the scripts' runner ----------------------
@pytest.fixture
def runner(tmp_path, monkeypatch):
    """scripts/_common.run with a fake snakemake object; returns (call, log, stderr)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import _common

    out_dir = tmp_path / "results" / "S1" / "merge"
    out_dir.mkdir(parents=True)
    log = tmp_path / "logs" / "merge_patches" / "S1.log"
    log.parent.mkdir(parents=True)
    snakemake = SimpleNamespace(
        log=[str(log)],
        rule="merge_patches",
        wildcards=SimpleNamespace(sample="S1"),
        output=[str(out_dir / "maps.zarr")],
        resources=SimpleNamespace(mem_mb=2000),
    )
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stderr)
    saved_stderr, root = sys.stderr, logging.getLogger()
    saved = (root.handlers[:], root.level)

    def call(exc: BaseException) -> None:
        def main():
            raise exc

        with pytest.raises(SystemExit) as stop:
            _common.run(snakemake, main)
        assert stop.value.code == 1

    yield call, log, stderr
    for handler in root.handlers:
        handler.close()
    sys.stderr = saved_stderr
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    logging.captureWarnings(False)


def _one_line(log: Path, stderr: io.StringIO) -> str:
    text = log.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text
    shown = stderr.getvalue().splitlines()
    assert len(shown) == 1 and shown[0].startswith("histoflow error: sample 'S1'")
    assert errors[0].endswith(shown[0].removeprefix("histoflow error: "))
    return errors[0]


def test_disk_full_with_a_path_names_sample_path_and_free_space(runner, tmp_path):
    call, log, stderr = runner
    chunk = tmp_path / "results" / "S1" / "merge" / ".maps.zarr.tmp" / "prob" / "0.0"
    call(OSError(errno.ENOSPC, "No space left on device", str(chunk)))
    line = _one_line(log, stderr)
    assert f"sample 'S1', file '{chunk}': disk full (No space left on device)" in line
    assert " free on '" in line
    # The traceback follows the line, for developers.
    text = log.read_text()
    assert text.index("Traceback") > text.index(" ERROR ")


def test_disk_full_without_a_path_names_the_jobs_folders(runner, tmp_path):
    call, log, stderr = runner
    call(OSError(errno.ENOSPC, "No space left on device"))
    line = _one_line(log, stderr)
    assert "sample 'S1': disk full (No space left on device);" in line
    assert " free on '" in line and str(tmp_path) in line


def test_disk_full_behind_a_librarys_own_error_is_still_disk_full(runner):
    call, log, stderr = runner
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/scratch/x/0.0")
        except OSError as cause:
            raise RuntimeError("failed to write chunk") from cause
    except RuntimeError as wrapped:
        call(wrapped)
    line = _one_line(log, stderr)
    assert "sample 'S1', file '/scratch/x/0.0': disk full (No space left on device)" in line


def test_out_of_memory_is_one_line_with_the_jobs_memory(runner):
    call, log, stderr = runner
    call(MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000, 4)"))
    line = _one_line(log, stderr)
    assert "sample 'S1': out of memory (Unable to allocate 37.3 GiB" in line
    assert "the job asked for 2000 MB (resources mem_mb)" in line


def test_other_os_errors_and_bugs_are_one_line(runner):
    call, log, stderr = runner
    call(PermissionError(errno.EACCES, "Permission denied", "/data/slides/a.svs"))
    line = _one_line(log, stderr)
    assert "sample 'S1', file '/data/slides/a.svs': Permission denied (EACCES)" in line


def test_unexpected_exception_is_one_line(runner):
    call, log, stderr = runner
    call(KeyError("boxes"))
    assert "sample 'S1': unexpected KeyError: 'boxes'" in _one_line(log, stderr)


def test_histoflow_error_stays_its_own_line(runner):
    call, log, stderr = runner
    call(SlideError("slide file not found", "S1", "/x.svs"))
    line = _one_line(log, stderr)
    assert line.endswith("sample 'S1', file '/x.svs': slide file not found")
    assert "Traceback" not in log.read_text()
