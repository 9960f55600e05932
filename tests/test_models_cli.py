"""`python -m histoflow.models list|fetch` against a local HTTP server on 127.0.0.1.

The server serves a generated HoVer-Net checkpoint with HTTP Range support; it can cut
the first response short to simulate a dropped connection. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from histoflow.errors import ModelError
from histoflow.models import zoo
from histoflow.models.__main__ import main
from histoflow.models.card import builtin_names, load_card
from histoflow.models.hovernet import HoVerNet, to_published
from histoflow.models.hovernet.checkpoint import read_checkpoint

HOVERNET_CARDS = [n for n in builtin_names() if n.startswith("hovernet")]


def small_checkpoint() -> bytes:
    """A checkpoint file's bytes in the published layout: HoVer-Net's first block."""
    torch.manual_seed(0)
    state = {
        to_published(k): v
        for k, v in HoVerNet("fast", num_types=None).state_dict().items()
        if k.startswith(("conv0.", "d0.units.0."))
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class Server:
    """A bounded local file server: `cut_after` bytes end the next response early."""

    def __init__(self, body: bytes):
        self.body, self.cut_after, self.ranges, self.honour_range = body, None, [], True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the thread forever

            def do_GET(self):
                start, status = 0, 200
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header and server.honour_range:
                    start, status = int(header.removeprefix("bytes=").split("-")[0]), 206
                    if start >= len(server.body):
                        self.send_response(416)
                        self.end_headers()
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(len(server.body) - start))
                if status == 206:
                    end = len(server.body) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(server.body)}")
                self.end_headers()
                data = server.body[start:]
                if server.cut_after is not None:
                    data, server.cut_after = data[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def body() -> bytes:
    return small_checkpoint()


@pytest.fixture
def server(body):
    with Server(body) as s:
        yield s


def quiet(_msg):
    pass


def test_interrupted_download_is_resumed_with_a_range_request(server, body, tmp_path):
    dest = tmp_path / "w.pth"
    server.cut_after = len(body) // 3
    with pytest.raises(ModelError, match=r"stopped after \d+ of \d+ bytes.*run the same fetch"):
        zoo.download(server.url, dest, progress=False, say=quiet, timeout=10)
    part = tmp_path / "w.pth.part"
    assert not dest.exists()  # nothing under the final name
    assert part.stat().st_size == len(body) // 3
    sha = hashlib.sha256(body).hexdigest()
    assert zoo.download(server.url, dest, sha, progress=False, say=quiet, timeout=10) == sha
    assert server.ranges == [None, f"bytes={len(body) // 3}-"]
    assert dest.read_bytes() == body and not part.exists()
    # the resumed file is the checkpoint, readable as plain tensors
    state = read_checkpoint(dest)
    assert "conv0./.weight" in state and state["conv0./.weight"].shape == (64, 3, 7, 7)


def test_server_ignoring_range_restarts_the_file(server, body, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(b"stale bytes of an older file")
    server.honour_range = False  # answers 200 with the whole body
    sha = hashlib.sha256(body).hexdigest()
    zoo.download(server.url, tmp_path / "w.pth", sha, progress=False, say=quiet, timeout=10)
    assert (tmp_path / "w.pth").read_bytes() == body


def test_wrong_hash_is_refused_and_nothing_is_left(server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(ModelError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}: refused"):
        zoo.download(server.url, dest, "0" * 64, progress=False, say=quiet, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_complete_part_file_is_verified_without_refetching(server, body, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    zoo.download(server.url, tmp_path / "w.pth", sha, progress=False, say=quiet, timeout=10)
    assert server.ranges == [f"bytes={len(body)}-"]  # answered 416: nothing more to send
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_existing_file_with_another_hash_is_not_overwritten(server, tmp_path):
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"something else")
    with pytest.raises(ModelError, match=r"exists with sha256 .* remove it"):
        zoo.download(server.url, dest, "0" * 64, progress=False, say=quiet, timeout=10)
    assert dest.read_bytes() == b"something else" and server.ranges == []


def test_fetch_card_prints_licence_and_unknown_hash(server, body, tmp_path, monkeypatch):
    card = load_card("builtin:hovernet_original-kumar")
    card.card["weights"]["url"] = server.url
    monkeypatch.setattr(zoo, "load_card", lambda _spec: card)
    said = []
    dest = zoo.fetch_card("hovernet_original-kumar", tmp_path, progress=False, say=said.append)
    assert dest == tmp_path / "hovernet_original-kumar.pth" and dest.read_bytes() == body
    text = "\n".join(said)
    assert "licence CC BY-NC-SA 4.0" in text
    assert (
        f"no sha256 is published for hovernet_original-kumar.pth: its sha256 is "
        f"{hashlib.sha256(body).hexdigest()}" in text
    )


def test_cli_fetch_with_wrong_sha256_exits_1(server, tmp_path, monkeypatch, capsys):
    card = load_card("builtin:hovernet_fast-pannuke")
    card.card["weights"]["url"] = server.url
    monkeypatch.setattr(zoo, "load_card", lambda _spec: card)
    code = main(
        [
            "fetch",
            "hovernet_fast-pannuke",
            "--to",
            str(tmp_path),
            "--no-progress",
            "--sha256",
            "f" * 64,
        ]
    )
    err = capsys.readouterr()
    assert code == 1 and err.err.startswith("error: download of ") and "refused" in err.err
    assert "licence CC BY-NC-SA 4.0" in err.out
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_a_malformed_sha256(capsys):
    assert main(["fetch", "hovernet_fast-pannuke", "--sha256", "abc"]) == 1
    assert "--sha256: 'abc' is not 64 hex digits" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "licence"),
    [
        ("hovernet_fast-pannuke", "CC BY-NC-SA 4.0"),
        ("hovernet_fast-monusac", "CC BY-NC-SA 4.0"),
        ("hovernet_original-kumar", "CC BY-NC-SA 4.0"),
        ("hovernet_original-consep", "Apache-2.0"),
        ("hovernetplus-oed", "CC BY-NC-SA 4.0"),
    ],
)
def test_cards_name_licence_and_the_published_file(name, licence):
    card = load_card(f"builtin:{name}").card
    assert card["licence"] == licence
    assert card["weights"]["url"] == (
        f"https://huggingface.co/TIACentre/TIAToolbox_pretrained_weights/resolve/main/{name}.pth"
    )


def test_list_shows_every_card_with_licence_and_how_to_get_weights():
    out = subprocess.run(
        [sys.executable, "-m", "histoflow.models", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    for name in HOVERNET_CARDS:
        block = out.split(f"builtin:{name}\n")[1].split("\n\n")[0]
        assert "licence  CC BY-NC-SA 4.0" in block or "licence  Apache-2.0" in block
        assert f"python -m histoflow.models fetch {name}" in block
    assert "Non-Neoplastic Epithelial" in out and "layers: Background, Other Tissue" in out
    assert "builtin:hed_nuclei" in out


def test_readme_models_table_lists_every_card_with_its_licence():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Models\n")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| `")]
    rows = {line.split("|")[1].strip(" `"): line for line in lines}
    assert sorted(rows) == [f"builtin:{n}" for n in builtin_names()]
    for name in HOVERNET_CARDS:
        card = load_card(f"builtin:{name}").card
        assert f"| {card['licence']} |" in rows[f"builtin:{name}"]
        assert f"| {card['mpp']:g} |" in rows[f"builtin:{name}"]
        assert f"python -m histoflow.models fetch {name}" in rows[f"builtin:{name}"]
