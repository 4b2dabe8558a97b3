"""`imis serve --zoom`: the app runs on the zoom-wrapped model (imis.models.zoom) like on any other."""

from __future__ import annotations

import httpx
import numpy as np
import SimpleITK as sitk

from imis.models.zoom import ZoomModel
from tests.app.conftest import live_server
from tests.app.helpers import BTCV_CASE, KIDNEY_LEFT, btcv_label, dice, interior_point


def test_a_click_on_a_small_organ_through_the_zoomed_model(model, data_dir, btcv_dir, tmp_path):
    kidney = btcv_label(btcv_dir, BTCV_CASE, KIDNEY_LEFT)
    x, y = interior_point(kidney)
    with (
        live_server(ZoomModel(model), data_dir=data_dir) as url,
        httpx.Client(base_url=url, timeout=180) as c,
    ):
        assert c.get("/api/info").json()["model"] == "imis-lite+zoom"
        sid = c.post("/api/open", json={"path": f"btcv/{BTCV_CASE}.png"}).json()["doc"]["id"]
        r = c.post(
            f"/api/s/{sid}/prompt", json={"axis": "z", "index": 0, "kind": "click", "value": [x, y, True]}
        )
        assert r.status_code == 200, r.text
        r = c.post(
            f"/api/s/{sid}/prompt", json={"axis": "z", "index": 0, "kind": "click", "value": [x, y - 3, True]}
        )
        assert r.status_code == 200, r.text  # a second click feeds the pasted logits back through the crop
        out = tmp_path / "labels.nii.gz"
        out.write_bytes(c.get(f"/api/s/{sid}/export", params={"fmt": "nii.gz"}).content)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).reshape(kidney.shape)
    assert dice(labels == 1, kidney) > 0.6, np.unique(labels)
