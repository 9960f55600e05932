"""Headless Chromium for the report tests: installed from Debian's `chromium` package
when missing (root and apt-get needed, as tests/slurm/cluster.py installs SLURM),
then used to load a page, run a check script in it and take a screenshot.

    chrome = find_or_install_chromium()      # raises BrowserUnavailable with the reason
    result = run_check(chrome, page, CHECK_JS, tmp_path)   # the script's JSON result
    png = screenshot(chrome, page, tmp_path / "shot.png")
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PACKAGES = ("chromium",)
# Virtual time the page gets before the DOM is dumped: timers and image decoding run
# in it, without waiting that long in real time.
BUDGET_MS = 20000


class BrowserUnavailable(RuntimeError):
    """No headless browser can run here; the message says why (the skip reason)."""


def find_chromium() -> str | None:
    return next((path for b in BINARIES if (path := shutil.which(b))), None)


def find_or_install_chromium(timeout: float = 600) -> str:
    """The path of a Chromium binary, apt-get installing Debian's package if needed."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0:
        raise BrowserUnavailable("chromium missing and not root, so it cannot be installed")
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable("chromium missing and no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=120"]
    for cmd in (
        ["apt-get", *lock, "update"],
        ["apt-get", *lock, "install", "-y", "--no-install-recommends", *PACKAGES],
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise BrowserUnavailable(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise BrowserUnavailable(f"`{' '.join(cmd)}` failed: " + " | ".join(tail))
    found = find_chromium()
    if not found:
        raise BrowserUnavailable("chromium still missing after apt-get install")
    return found


def _chrome(binary: str, profile: Path, *args: str, timeout: float = 120):
    # --no-sandbox: tests run as root in containers, where the sandbox cannot start.
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def run_check(binary: str, page: Path, script: str, work: Path) -> dict:
    """Load a copy of `page` with `script` appended and return what the script wrote
    as JSON into <pre id="selfcheck"> (it must write it, or the check fails)."""
    work.mkdir(parents=True, exist_ok=True)
    copy = work / f"check-{page.name}"
    text = Path(page).read_text(encoding="utf-8")
    copy.write_text(text.replace("</body>", f"<script>{script}</script></body>"), "utf-8")
    # One retry: a headless start that loses the page (seen once in ~20 runs on a busy
    # machine) dumps an empty DOM.
    for attempt in range(2):
        proc, _ = _chrome(
            binary, work / f"profile{attempt}", f"--virtual-time-budget={BUDGET_MS}",
            "--dump-dom", copy.resolve().as_uri(),
        )  # fmt: skip
        found = re.findall(r'<pre id="selfcheck">(.*?)</pre>', proc.stdout, re.S)
        if found:
            break
    if not found:
        raise AssertionError(f"no self-check result (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(html.unescape(found[-1]))


def screenshot(binary: str, page: Path, out: Path, size=(1280, 1600)) -> tuple[Path, float]:
    """A PNG of the page's first `size` pixels; returns it and the browser's wall time."""
    proc, seconds = _chrome(
        binary, out.parent / "profile-shot", f"--screenshot={out}",
        f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={BUDGET_MS}",
        "--hide-scrollbars", Path(page).resolve().as_uri(),
    )  # fmt: skip
    if not out.is_file():
        raise AssertionError(f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out, seconds
