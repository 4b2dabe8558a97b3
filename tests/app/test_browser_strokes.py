"""Scribble and lasso in a real Chromium on a btcv-demo slice with the real imis-lite: a scribble along the
liver, a lasso around the spleen (Dice read back through the export), undo/redo of the lasso; screenshots."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from tests.app.conftest import shot
from tests.app.helpers import (
    BTCV_CASE,
    LIVER,
    SPLEEN,
    btcv_label,
    dice,
    drag_path,
    export,
    label_count,
    lasso_around,
    open_upload,
    stroke_inside,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _labels(page, tmp_path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(export(page, "nii.gz", tmp_path)))).reshape(512, 512)


def test_scribble_and_lasso_in_the_page(page, server, btcv_dir, tmp_path):
    liver = btcv_label(btcv_dir, BTCV_CASE, LIVER)
    spleen = btcv_label(btcv_dir, BTCV_CASE, SPLEEN)
    open_upload(page, server, btcv_dir / "image" / f"{BTCV_CASE}.png")

    page.keyboard.press("s")
    assert page.locator('#tools button[data-tool="scribble"]').get_attribute("class") == "on"
    drag_path(page, stroke_inside(liver, step=4))
    shot(page, "btcv_liver_scribble")
    d_liver = dice(_labels(page, tmp_path) == 1, liver)

    page.keyboard.press("m")
    wait_idle(page)
    page.keyboard.press("l")
    drag_path(page, lasso_around(spleen))
    shot(page, "btcv_spleen_lasso")
    labels = _labels(page, tmp_path)
    d_spleen = dice(labels == 2, spleen)
    print(f"in the page: scribble liver Dice {d_liver:.3f}, lasso spleen Dice {d_spleen:.3f}")
    assert d_liver >= 0.8 and d_spleen >= 0.8 and (labels == 1).sum() > 0

    spleen_px = label_count(page, 2)
    page.keyboard.press("Control+z")
    wait_idle(page)
    assert label_count(page, 2) == 0
    page.keyboard.press("Control+y")
    wait_idle(page)
    assert label_count(page, 2) == spleen_px
