"""Benchmark the cohort report page at scale: its size and how fast it opens.

Writes synthetic cohorts (histoflow.synthetic.cohort: mask outline and objects
pictures, instance tables, benchmark files, 1 % failed slides, a blank one) of each
size, builds results/cohort/report.html with `write_report`, and measures:

- the page size, split into the embedded pictures (two per slide, resized to
  report.thumbnail_px and embedded once), the rest of the JSON and the HTML/script;
- the time `write_report` takes (pictures, plots, MultiQC files included);
- in headless Chromium (Debian package `chromium`; tests/browser.py), with a
  synchronous probe script appended to a copy of the page: the time from navigation
  start to the end of the report script's first render (page parsed, JSON decoded,
  first page of gallery and table drawn), and the time of a sort on a column, a text
  filter and going to the next page (each redraws one page of slides);
- the wall time of a whole `chromium --headless --dump-dom` of the page, and of an
  empty page (browser start-up alone), median of `--repeats` runs.

Prints a markdown table and saves a screenshot of the largest page.

    .venv/bin/python benchmarks/bench_report.py --slides 20 100 500
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "tests"))

# Runs synchronously after the report's script: the first render is done.
PROBE = """<script>(function () {
  var t = { ready_ms: performance.now() };
  function time(name, action) {
    var s = performance.now(); action(); t[name] = performance.now() - s;
  }
  function set(id, value, ev) {
    var el = document.getElementById(id); el.value = value; el.dispatchEvent(new Event(ev));
  }
  time("sort_ms", function () { document.querySelector('#table th[data-key="objects"]').click(); });
  time("filter_ms", function () { set("filter", "slide-1", "input"); });
  time("clear_ms", function () { set("filter", "", "input"); });
  time("next_page_ms", function () { document.getElementById("next").click(); });
  t.rows = document.querySelectorAll("#table tbody tr").length;
  t.cards = document.querySelectorAll("#gallery .card").length;
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(t);
  document.body.appendChild(pre);
})();</script>"""


def build(root: Path, slides: int, page_size: int) -> tuple[Path, float]:
    from histoflow.report.build import write_report
    from histoflow.report.settings import ReportSettings
    from histoflow.synthetic.cohort import SyntheticCohort, write_synthetic_cohort

    if not (root / "results").is_dir():
        failed = tuple(range(7, slides, 100))
        spec = SyntheticCohort(slides, failed=failed, blank=(3,), sheet_mpp=(5,), large=(9,))
        write_synthetic_cohort(root, spec)
    sheet = {f"slide-{i:03d}": {"path": f"slides/slide-{i:03d}.svs"} for i in range(slides)}
    start = time.perf_counter()
    settings = ReportSettings(page_size=page_size)
    write_report(sheet, root / "results", root / "logs", root / "benchmarks", settings)
    return root / "results" / "cohort" / "report.html", time.perf_counter() - start


def sizes(page: Path) -> dict[str, float]:
    text = page.read_text(encoding="utf-8")
    images = re.search(r'id="report-images"[^>]*>(.*?)</script>', text, re.S).group(1)
    data = re.search(r'id="report-data"[^>]*>(.*?)</script>', text, re.S).group(1)
    return {
        "page_mb": page.stat().st_size / 1e6,
        "pictures_mb": len(images.encode()) / 1e6,
        "pictures": len(json.loads(images)),
        "data_kb": len(data.encode()) / 1e3,
    }


def browser_times(chrome: str, page: Path, work: Path, repeats: int) -> dict[str, float]:
    from browser import _chrome

    probe = work / "probe.html"
    probe.write_text(page.read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    runs, walls = [], []
    for i in range(repeats):
        proc, wall = _chrome(chrome, work / f"profile{i}", "--dump-dom", probe.as_uri())
        found = re.findall(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
        if not found:
            raise RuntimeError(f"probe did not run: {proc.stderr[-2000:]}")
        runs.append(json.loads(found[-1]))
        walls.append(wall)
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    out["dump_s"] = statistics.median(walls)
    return out


def blank_page_seconds(chrome: str, work: Path, repeats: int) -> float:
    from browser import _chrome

    empty = work / "empty.html"
    empty.write_text("<!DOCTYPE html><title>empty</title><p>empty</p>")
    walls = [
        _chrome(chrome, work / f"e{i}", "--dump-dom", empty.as_uri())[1] for i in range(repeats)
    ]
    return statistics.median(walls)


def main() -> None:
    from browser import find_or_install_chromium, screenshot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="keep the cohorts and screenshot here")
    parser.add_argument(
        "--all-rows", action="store_true", help="also the largest cohort on one page (no paging)"
    )
    args = parser.parse_args()
    chrome = find_or_install_chromium()
    base = args.out or Path(tempfile.mkdtemp(prefix="bench-report-"))
    base.mkdir(parents=True, exist_ok=True)
    empty_s = blank_page_seconds(chrome, base, args.repeats)
    print(
        "| slides | per page | page MB | pictures (MB) | other JSON KB | write_report s "
        "| first render ms | sort ms | filter ms | next page ms | rows/cards drawn "
        "| chromium dump s (empty page) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs = [(n, 50) for n in args.slides]
    runs += [(args.slides[-1], args.slides[-1])] if args.all_rows else []
    for n, page_size in runs:
        root = base / f"cohort{n}"
        page, build_s = build(root, n, page_size)
        size = sizes(page)
        t = browser_times(chrome, page, root, args.repeats)
        print(
            f"| {n} | {page_size} | {size['page_mb']:.2f} "
            f"| {size['pictures']} ({size['pictures_mb']:.2f}) "
            f"| {size['data_kb']:.0f} | {build_s:.1f} | {t['ready_ms']:.0f} | {t['sort_ms']:.1f} "
            f"| {t['filter_ms']:.1f} | {t['next_page_ms']:.1f} | {t['rows']:.0f}/{t['cards']:.0f} "
            f"| {t['dump_s']:.2f} ({empty_s:.2f}) |",
            flush=True,
        )
    n = args.slides[-1]
    page, _ = build(base / f"cohort{n}", n, 50)
    shot, _ = screenshot(chrome, page, base / f"report-{n}.png", size=(1400, 2400))
    print(f"\nscreenshot of the {args.slides[-1]}-slide page: {shot}")


if __name__ == "__main__":
    main()
