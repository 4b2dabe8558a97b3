"""Scribble and lasso prompts: the stroke -> prompt rules (no model), then over HTTP with the real
imis-lite on a btcv-demo slice (liver by a scribble, spleen by a lasso, Dice through the export;
undo/redo; a negative scribble) and on Colin27's coronal and sagittal views."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from imis.app.strokes import (
    SCRIBBLE_POINTS,
    deep_points,
    lasso_prompt,
    polygon_mask,
    resample,
    scribble_clicks,
)
from imis.errors import PromptError
from tests.app.conftest import AAL, COLIN
from tests.app.helpers import BTCV_CASE, LIVER, SPLEEN, btcv_label, dice, lasso_around, stroke_inside


def test_resample_spreads_points_by_arc_length():
    # an L-shaped stroke 20 px long: 4 points at the centres of 5 px stretches
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    out = resample(pts, 4)
    assert np.allclose(out, [[2.5, 0], [7.5, 0], [10, 2.5], [10, 7.5]])
    assert np.allclose(resample(np.array([[3.0, 4.0], [3.0, 4.0]]), 2), [[3, 4], [3, 4]])


def test_scribble_clicks_carry_the_sign_and_stay_in_the_plane():
    clicks = scribble_clicks([[-50, 5], [100, 5], [200, 5]], False, (20, 120))
    assert len(clicks) == SCRIBBLE_POINTS and all(not pos for *_, pos in clicks)
    assert all(0 <= x <= 119 and y == 5 for x, y, _ in clicks)
    for bad in ([[1, 2]], [[1, 2, 3], [4, 5, 6]], [[0, 0], [float("nan"), 1]], "x"):
        with pytest.raises(PromptError):
            scribble_clicks(bad, True, (20, 20))


def test_lasso_gives_its_box_and_optionally_points_deep_inside():
    # a U-shaped polygon: its deepest points lie in the arms or the bar, never in the notch
    poly = [[10, 10], [90, 10], [90, 90], [60, 90], [60, 30], [40, 30], [40, 90], [10, 90]]
    assert lasso_prompt(poly, (100, 100)) == ((10, 10, 90, 90), [])  # the rule measured best: the box
    box, clicks = lasso_prompt(poly, (100, 100), n_points=3)
    assert box == (10, 10, 90, 90) and len(clicks) == 3
    filled = polygon_mask(np.array(poly, float), (100, 100))
    for x, y, pos in clicks:
        assert pos and filled[int(y), int(x)] and not (40 < x < 60 and y > 30)
    spread = deep_points(filled, 3)
    assert min(np.hypot(a[0] - b[0], a[1] - b[1]) for a in spread for b in spread if a != b) > 20
    with pytest.raises(PromptError, match="encloses no area"):
        lasso_prompt([[5, 5], [50, 5], [5, 5.5]], (100, 100))


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server, timeout=180) as c:
        yield c


def _export(c, sid, tmp_path) -> np.ndarray:
    r = c.get(f"/api/s/{sid}/export", params={"fmt": "nii.gz"})
    assert r.status_code == 200, r.text
    (tmp_path / "x.nii.gz").write_bytes(r.content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x.nii.gz")))


def _prompt(c, sid, kind, value, axis="z", index=0):
    r = c.post(f"/api/s/{sid}/prompt", json={"axis": axis, "index": index, "kind": kind, "value": value})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_scribble_and_lasso_on_a_btcv_slice(client, btcv_dir, tmp_path):
    liver = btcv_label(btcv_dir, BTCV_CASE, LIVER)
    spleen = btcv_label(btcv_dir, BTCV_CASE, SPLEEN)
    sid = client.post("/api/open", json={"path": f"btcv/{BTCV_CASE}.png"}).json()["doc"]["id"]
    st = _prompt(client, sid, "scribble", {"points": stroke_inside(liver), "positive": True})
    assert len(st["draft"]["clicks"]) == SCRIBBLE_POINTS  # the stroke's clicks, shown as marks
    d_liver = dice(_export(client, sid, tmp_path).reshape(512, 512) == 1, liver)
    # a negative scribble across the spleen adds excluding clicks; undo takes the whole stroke back
    st = _prompt(client, sid, "scribble", {"points": stroke_inside(spleen), "positive": False})
    assert len(st["draft"]["clicks"]) == 2 * SCRIBBLE_POINTS
    assert not any(c[2] for c in st["draft"]["clicks"][SCRIBBLE_POINTS:])
    st = client.post(f"/api/s/{sid}/history", json={"op": "undo"}).json()
    assert len(st["draft"]["clicks"]) == SCRIBBLE_POINTS and st["draft"]["can_redo"]
    client.post(f"/api/s/{sid}/objects", json={"op": "next"})
    st = _prompt(client, sid, "lasso", {"points": lasso_around(spleen)})
    assert st["draft"]["box"] and st["draft"]["clicks"] == []
    labels = _export(client, sid, tmp_path).reshape(512, 512)
    d_spleen = dice(labels == 2, spleen)
    print(f"scribble liver Dice {d_liver:.3f}, lasso spleen Dice {d_spleen:.3f}")
    assert d_liver >= 0.8 and d_spleen >= 0.8
    assert client.post(f"/api/s/{sid}/history", json={"op": "undo"}).json()["draft"]["box"] is None
    assert not (_export(client, sid, tmp_path) == 2).any()
    client.post(f"/api/s/{sid}/history", json={"op": "redo"})
    assert dice(_export(client, sid, tmp_path).reshape(512, 512) == 2, spleen) == pytest.approx(d_spleen)
    for bad in ({"points": [[1, 1]]}, [[1, 1], [2, 2]], {"points": "x"}):
        r = client.post(f"/api/s/{sid}/prompt", json={"kind": "lasso", "value": bad})
        assert r.status_code == 400 and "lasso" in r.json()["detail"]


@pytest.mark.slow
def test_strokes_on_the_views_of_a_volume(client, tmp_path):
    if not (COLIN.exists() and AAL.exists()):
        pytest.skip("Colin27/AAL absent")
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(AAL)))
    sid = client.post("/api/open", json={"path": "ch2.nii.gz"}).json()["doc"]["id"]
    thal = aal == 77  # left thalamus
    y = int(np.round(np.nonzero(thal)[1].mean()))
    _prompt(client, sid, "lasso", {"points": lasso_around(thal[:, y, :], pad=3, every=3)}, "y", y)
    client.post(f"/api/s/{sid}/objects", json={"op": "next"})
    x = int(np.round(np.nonzero(thal)[2].mean()))
    _prompt(client, sid, "scribble", {"points": stroke_inside(thal[:, :, x], step=1)}, "x", x)
    labels = _export(client, sid, tmp_path)
    d_cor, d_sag = dice(labels[:, y, :] == 1, thal[:, y, :]), dice(labels[:, :, x] == 2, thal[:, :, x])
    print(f"Colin27 left thalamus: coronal lasso Dice {d_cor:.3f}, sagittal scribble Dice {d_sag:.3f}")
    assert (labels == 1).sum() == (labels[:, y, :] == 1).sum() > 0  # on its plane only
    assert d_cor >= 0.6 and d_sag >= 0.4
