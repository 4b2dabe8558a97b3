"""Safety of `imis serve`: the token, the upload limit (413 before the body is read whole; compressed
files by their inflated size, without inflating them all), paths kept
inside DATA_DIR (traversal, absolute paths, symlinks out), malformed uploads -> 400 with the reason shown
in the page, and the server still answering afterwards."""

from __future__ import annotations

import gzip
import io
import socket
import zipfile

import httpx
import numpy as np
import pytest

from tests.app.conftest import COLIN, live_server
from tests.app.helpers import wait_idle


@pytest.fixture(scope="module")
def token_server(model, data_dir):
    with live_server(model, data_dir=data_dir, token="s3cret", max_upload_mb=1) as url:
        yield url


def test_token_required(token_server):
    assert httpx.get(f"{token_server}/api/info").status_code == 401
    r = httpx.get(f"{token_server}/api/info", headers={"X-Imis-Token": "wrong"})
    assert r.status_code == 401 and "wrong access token" in r.json()["detail"]
    assert (
        httpx.get(f"{token_server}/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    )
    assert httpx.get(f"{token_server}/api/files", headers={"X-Imis-Token": "s3cret"}).status_code == 200
    assert httpx.get(f"{token_server}/").status_code == 200  # the page itself holds no data


def _raw_upload(url: str, declared: int, sent: int, token: str = "s3cret") -> bytes:
    """Declare `declared` bytes, send only `sent`, and read the answer (a server that waited for the
    whole body would never answer: the socket times out)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        head = (
            f"POST /api/upload?name=big.nii.gz HTTP/1.1\r\nHost: {host}\r\nX-Imis-Token: {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        )
        s.sendall(head.encode() + b"\x1f\x8b" + b"\0" * (sent - 2))
        return _read_answer(s)


def _read_answer(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        part = s.recv(4096)
        if not part:
            break
        data += part
    return data


def test_oversized_upload_refused_before_read(token_server):
    answer = _raw_upload(token_server, declared=200 * 2**20, sent=64 * 1024)
    assert answer.startswith(b"HTTP/1.1 413") and b"upload limit" in answer


def test_undeclared_oversized_upload_stops_at_limit(token_server):
    """Chunked upload with no length: 2 MB sent of an open-ended body, limit 1 MB -> 413 at once."""
    host, port = token_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            f"POST /api/upload?name=x.nii HTTP/1.1\r\nHost: {host}\r\nX-Imis-Token: s3cret\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"\0" * 2**16
        for _ in range(32):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = _read_answer(s)  # the body never ends: only a server that stopped reading can answer
    assert answer.startswith(b"HTTP/1.1 413")
    assert httpx.get(f"{token_server}/api/info", headers={"X-Imis-Token": "s3cret"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("../", 400),
        ("btcv/../../etc", 400),
        ("/etc/passwd", 400),
        ("C:/Windows", 400),
        ("escape", 404),  # a symlink to a folder outside DATA_DIR
        ("escape/secret.png", 404),
        ("escape.png", 404),  # a symlink to a file outside DATA_DIR
        ("nothing-here.png", 404),
    ],
)
def test_paths_stay_inside_data_dir(server, path, status):
    r = httpx.post(f"{server}/api/open", json={"path": path}, timeout=30)
    assert r.status_code == status, r.text
    if path.endswith("/") or "." not in path.rsplit("/", 1)[-1]:
        assert httpx.get(f"{server}/api/files", params={"path": path}).status_code == status


def test_listing_hides_links_out(server):
    names = {e["name"] for e in httpx.get(f"{server}/api/files").json()["entries"]}
    assert "btcv" in names and "escape" not in names and "escape.png" not in names
    assert httpx.get(f"{server}/static/../../../../etc/passwd").status_code == 404


def test_unknown_session_and_bad_prompts_are_4xx(server):
    assert httpx.get(f"{server}/api/s/nope").status_code == 404
    st = httpx.post(f"{server}/api/open", json={"path": "btcv/ABD_037_71.png"}, timeout=60).json()
    sid = st["doc"]["id"]
    bad = [
        {"kind": "click", "value": [9999, 5, True]},
        {"kind": "box", "value": [10, 10, 5, 5]},
        {"kind": "wave", "value": 1},
        {"kind": "click", "value": "x"},
        {"kind": "click", "axis": "q", "value": [1, 1, True]},
    ]
    for body in bad:
        r = httpx.post(f"{server}/api/s/{sid}/prompt", json=body, timeout=60)
        assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.text)
    assert httpx.post(f"{server}/api/s/{sid}/prompt", content=b"{", timeout=10).status_code == 400
    assert httpx.get(f"{server}/api/s/{sid}/export", params={"fmt": "exe"}).status_code == 400


def _nifti_gz_bomb(claim_shape, payload_mb: int, keep: int | None = None) -> bytes:
    """A .nii.gz whose header claims `claim_shape` int16 voxels, followed by `payload_mb` MiB of zeros
    (deflate packs them ~1000:1); `keep` truncates the compressed file to its first bytes."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(claim_shape)
    packed = gzip.compress(hdr.binaryblock + bytes(4) + bytes(payload_mb << 20), 1)
    return packed[:keep] if keep else packed


def _zip_bomb(mb: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/zeros.dcm", bytes(mb << 20))
    return buf.getvalue()


def test_compressed_uploads_refused_by_their_inflated_size(server):
    """The limit (64 MB here) bounds the decompressed data too, found without inflating it all."""
    # header claims 2 GB; the stream is cut after 4 kB, so inflating it all would fail another way
    claim = _nifti_gz_bomb((1000, 1000, 1000), 1, keep=4096)
    # header claims 2 kB, the stream holds 100 MiB of zeros (~100 kB compressed): stopped at 64 MB
    lying = _nifti_gz_bomb((10, 10, 10), 100)
    for name, body, reason in (
        ("claim.nii.gz", claim, "header says it inflates to 1907 MB"),
        ("lying.nii.gz", lying, "inflates to more than the limit of 64 MB"),
        ("bomb.zip", _zip_bomb(80), "the zip inflates to 80 MB"),
    ):
        assert len(body) < 1 << 20
        r = httpx.post(f"{server}/api/upload", params={"name": name}, content=body, timeout=60)
        assert r.status_code == 413 and reason in r.json()["detail"], (name, r.text)
    assert httpx.get(f"{server}/api/info").status_code == 200


def _upload_in_page(page, path) -> str:
    page.set_input_files("#upload", str(path))
    wait_idle(page)
    page.wait_for_selector("#message:not([hidden])")
    return page.inner_text("#message")


@pytest.mark.browser
def test_malformed_uploads_show_the_reason(page, server, btcv_dir, tmp_path):
    if not COLIN.exists():
        pytest.skip("Colin27 absent")
    raw = gzip.decompress(COLIN.read_bytes())
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(raw[: len(raw) // 3])
    renamed = tmp_path / "slice.nii"
    renamed.write_bytes((btcv_dir / "image" / "ABD_037_71.png").read_bytes())
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(_nifti_gz_bomb((10, 10, 10), 100))
    page.goto(server)
    for path, reason, status in (
        (truncated, "truncated", 400),
        (renamed, "not a nifti", 400),
        (empty, "empty", 400),
        (bomb, "inflates to more than the limit", 413),
    ):
        with page.expect_response(lambda r: "/api/upload" in r.url) as resp:
            text = _upload_in_page(page, path)
        assert resp.value.status == status
        assert path.name in text and reason in text.lower(), text
    assert httpx.get(f"{server}/api/info").status_code == 200


@pytest.mark.browser
def test_page_with_and_without_token(page, token_server):
    page.goto(token_server)
    page.wait_for_selector("#message:not([hidden])")
    assert "missing access token" in page.inner_text("#message")
    page.goto(f"{token_server}/?token=s3cret")
    page.wait_for_function("document.getElementById('model').textContent.includes('imis-lite')")
    assert "token" not in page.url  # taken out of the address bar, kept for the tab only
