"""Fixtures of the app tests: the real imis-lite model (loaded once), a live server on a free loopback
port (always stopped), a DATA_DIR holding real data as links, and the system Chromium via Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from imis.app.backend import ServeConfig
from imis.app.server import create_app

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")
AAL = Path("/usr/share/mricron/templates/aal.nii.gz")
CHROMIUM = Path("/usr/bin/chromium")
FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures" / "app"


@pytest.fixture(scope="session")
def model():
    from imis.models import load_model

    try:
        return load_model("imis-lite")
    except Exception as exc:  # weights not installed: nothing real to test against
        pytest.skip(f"imis-lite not available: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(model, **config):
    """A uvicorn server in a thread on 127.0.0.1; yields its base URL; stopped on exit."""
    import uvicorn

    app = create_app(ServeConfig(**config), model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def data_dir(btcv_dir):
    """DATA_DIR: copies of btcv-demo images and Colin27 (links out of DATA_DIR are refused by design), a
    sub-folder, and links pointing out of it."""
    root = Path(tempfile.mkdtemp(prefix="imis-app-data-"))
    (root / "btcv").mkdir()
    for name in ("ABD_037_71.png", "ABD_038_74.png"):
        src = btcv_dir / "image" / name
        if src.exists():
            shutil.copy(src, root / "btcv" / name)
    if COLIN.exists():
        shutil.copy(COLIN, root / "ch2.nii.gz")
    outside = Path(tempfile.mkdtemp(prefix="imis-app-outside-"))
    (outside / "secret.png").write_bytes(b"not for you")
    (root / "escape").symlink_to(outside)
    (root / "escape.png").symlink_to(outside / "secret.png")
    yield root
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture(scope="module")
def server(model, data_dir):
    with live_server(model, data_dir=data_dir, max_upload_mb=64) as url:
        yield url


@pytest.fixture(scope="session")
def browser_context():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} absent: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="imis-chromium-")
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ]
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=args,
            viewport={"width": 1400, "height": 860},
            accept_downloads=True,
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_context):
    pg = browser_context.new_page()
    yield pg
    pg.close()


def shot(page, name: str) -> Path:
    """Screenshot into docs/figures/app (the README shows some of them)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"{name}.png"
    page.screenshot(path=str(out))
    return out


os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
