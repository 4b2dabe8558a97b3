"""The 3D view: physical spacing and direction respected, the picture turns with the angles, hidden
objects left out (no model); then GET render3d over HTTP on a Colin27 object."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from imis.app.render3d import BACKGROUND, render, rotation
from imis.errors import PromptError
from tests.app.conftest import COLIN

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _extent(img: np.ndarray) -> tuple[int, int]:
    """(height, width) in pixels of what was drawn."""
    ys, xs = np.nonzero((img != BACKGROUND).any(-1))
    return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1


def _block() -> np.ndarray:
    lab = np.zeros((24, 48, 48), np.uint16)
    lab[2:22, 10:40, 10:20] = 1  # 20 slices x 30 rows x 10 columns (z, y, x)
    return lab


def test_rotation_is_a_proper_rotation():
    for az, el in ((0, 0), (37, 20), (-120, -60)):
        r = rotation(az, el)
        assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1)
    # the anterior view: screen right = +L, down = -S, looking towards +P
    assert np.allclose(rotation(0, 0), [[1, 0, 0], [0, 0, -1], [0, 1, 0]])


def test_spacing_and_angle_shape_the_picture():
    lab = _block()
    # from the front (azimuth 0) the block is x wide and z tall; with 3 mm slices it is 6x as tall as wide
    h, w = _extent(render(lab, (1.0, 1.0, 3.0), None, {1: RED}, 0, 0, 256))
    assert 5.0 < h / w < 7.0
    h1, w1 = _extent(render(lab, (1.0, 1.0, 1.0), None, {1: RED}, 0, 0, 256))
    assert 1.6 < h1 / w1 < 2.4  # 20 x 10 voxels of 1 mm
    # from the side (azimuth 90) the y extent (30) shows instead of x (10)
    hs, ws = _extent(render(lab, (1.0, 1.0, 1.0), None, {1: RED}, 90, 0, 256))
    assert 0.5 < hs / ws < 0.8
    front = render(lab, (1.0, 1.0, 1.0), None, {1: RED}, 0, 20, 256)
    turned = render(lab, (1.0, 1.0, 1.0), None, {1: RED}, 45, 20, 256)
    assert (front != turned).any(-1).mean() > 0.02
    # shading: not one flat colour
    drawn = front[(front != BACKGROUND).any(-1)]
    assert drawn[:, 0].std() > 5 and drawn[:, 1:].max() < 30


def test_colours_visibility_and_direction():
    lab = _block()
    lab[2:22, 10:40, 30:40] = 2
    img = render(lab, (1, 1, 1), None, {1: RED, 2: BLUE}, 0, 0, 256)
    reds, blues = img[..., 0] > 100, img[..., 2] > 100
    # anterior view, LPS: +x (array columns) is the patient's left, drawn on the right of the picture
    assert np.nonzero(reds)[1].mean() < np.nonzero(blues)[1].mean()
    flipped = render(lab, (1, 1, 1), np.diag([-1.0, 1.0, 1.0]), {1: RED, 2: BLUE}, 0, 0, 256)
    assert np.nonzero(flipped[..., 0] > 100)[1].mean() > np.nonzero(flipped[..., 2] > 100)[1].mean()
    only_blue = render(lab, (1, 1, 1), None, {2: BLUE}, 0, 0, 256)
    assert not (only_blue[..., 0] > 100).any() and (only_blue[..., 2] > 100).any()
    assert (render(lab, (1, 1, 1), None, {}, 0, 0, 128) == BACKGROUND).all()
    with pytest.raises(PromptError):
        render(lab[0], (1, 1, 1), None, {1: RED})


@pytest.mark.slow
def test_render3d_over_http(server):
    if not COLIN.exists():
        pytest.skip("Colin27 absent")
    with httpx.Client(base_url=server, timeout=180) as c:
        assert c.get("/api/info").json()["runtime"] == "torch fp32"  # shown in the page by the model
        sid = c.post("/api/open", json={"path": "ch2.nii.gz"}).json()["doc"]["id"]
        empty = c.get(f"/api/s/{sid}/render3d")
        assert empty.status_code == 200 and empty.headers["content-type"] == "image/png"
        r = c.post(
            f"/api/s/{sid}/prompt",
            json={"axis": "z", "index": 80, "kind": "box", "value": [70, 90, 110, 130]},
        )
        assert r.status_code == 200
        views = [c.get(f"/api/s/{sid}/render3d", params={"azimuth": a, "size": 256}) for a in (0, 90)]
        imgs = [np.asarray(Image.open(io.BytesIO(v.content)).convert("RGB")) for v in views]
        assert imgs[0].shape == (256, 256, 3)
        assert all((im != BACKGROUND).any(-1).sum() > 100 for im in imgs) and (imgs[0] != imgs[1]).any()
        assert c.get(f"/api/s/{sid}/render3d", params={"size": 5000}).status_code == 400
        sid2 = c.post("/api/open", json={"path": "btcv/ABD_037_71.png"}).json()["doc"]["id"]
        r = c.get(f"/api/s/{sid2}/render3d")
        assert r.status_code == 400 and "needs a volume" in r.json()["detail"]
