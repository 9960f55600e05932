"""HoVer-Net / HoVer-Net+ against TIAToolbox 2.1.3's own outputs (shared/reference/hovernet).

For each reference model the formula checkpoint is rebuilt from the published key listing,
loaded strictly into histoflow's architecture and run on the stored patch. The patch goes
in as TIAToolbox feeds it: float32 NCHW RGB in 0..255 (the model divides by 255 itself).
The stored outputs are what TIAToolbox's model `forward` returns, before its `infer_batch`
applies softmax: `np`, `tp` and `ls` are logits, `hv` the raw map; so they are compared
with histoflow's `forward` outputs directly (H x W x C after a transpose), to <= 1e-4.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from histoflow.models.hovernet import formula_state_dict, load_checkpoint, published_model
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("HISTOFLOW_REFERENCE", REPO.parent / "shared" / "reference"))
LISTING = REFERENCE / "tiatoolbox-2.1.3-nucleus-checkpoint-keys.json"
TOLERANCE = 1e-4

needs_reference = pytest.mark.skipif(
    not (REFERENCE / "hovernet").is_dir() or not LISTING.is_file(),
    reason=f"reference outputs not found under {REFERENCE} (set HISTOFLOW_REFERENCE)",
)


def listing(name: str) -> list:
    return json.loads(LISTING.read_text())[name]["keys"]


def run_reference_patch(name: str, state: dict) -> tuple[dict, dict]:
    model = load_checkpoint(state, published_model(name))
    rgb = np.array(Image.open(REFERENCE / "hovernet" / f"{name}.input.png").convert("RGB"))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        out = model(x)
    ours = {k: v[0].permute(1, 2, 0).numpy() for k, v in out.items()}
    with np.load(REFERENCE / "hovernet" / f"{name}.logits.npz") as ref:
        theirs = {k: ref[k] for k in ref.files}
    return ours, theirs


@needs_reference
@pytest.mark.parametrize(
    ("name", "size", "heads"),
    [
        ("hovernet_fast-pannuke", 164, {"np": 2, "hv": 2, "tp": 6}),
        ("hovernet_original-consep", 80, {"np": 2, "hv": 2, "tp": 5}),
        ("hovernetplus-oed", 164, {"np": 2, "hv": 2, "tp": 3, "ls": 5}),
    ],
)
def test_matches_tiatoolbox_outputs(name, size, heads):
    ours, theirs = run_reference_patch(name, formula_state_dict(listing(name)))
    assert set(ours) == set(theirs) == set(heads)
    diffs = {}
    for head, channels in heads.items():
        assert ours[head].shape == theirs[head].shape == (size, size, channels)
        diffs[head] = float(np.abs(ours[head] - theirs[head]).max())
    print(f"{name}: max abs difference per head {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs


@needs_reference
def test_reference_is_sensitive_to_the_checkpoint():
    # Negative control: the formula applied to the listing in reverse order (every entry
    # keeps its shape, gets other values) must miss the reference by far more than the
    # tolerance, so a match is not an artefact of a weight-insensitive network.
    name = "hovernet_fast-pannuke"
    keys = listing(name)
    state = formula_state_dict(keys[::-1])
    ours, theirs = run_reference_patch(name, state)
    diff = max(float(np.abs(ours[h] - theirs[h]).max()) for h in theirs)
    print(f"{name}, reversed formula: max abs difference {diff}")
    assert diff > 1000 * TOLERANCE
