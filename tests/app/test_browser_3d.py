"""The 3D view in a real Chromium: Colin27 with four AAL structures imported as a label map plus one drawn
with a lasso on the coronal view, rendered by the server, turned with the slider and by dragging;
screenshots."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.app.conftest import AAL, COLIN, shot
from tests.app.helpers import drag_path, lasso_around, open_listed, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
STRUCTURES = (37, 38, 77, 78)  # hippocampus L/R, thalamus L/R (aal.nii.txt)
CAUDATE_L = 71


def _rendered(page, after: int) -> str:
    page.wait_for_function(
        "(n) => Number(document.getElementById('img3d').dataset.count || 0) > n && "
        "document.getElementById('img3d').complete",
        arg=after,
        timeout=120_000,
    )
    return page.evaluate(
        "() => { const i = document.getElementById('img3d'); const c = document.createElement('canvas');"
        " c.width = i.naturalWidth; c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);"
        " return c.toDataURL(); }"
    )


def _count(page) -> int:
    return int(page.get_attribute("#img3d", "data-count") or 0)


def test_3d_view_renders_and_turns(page, server, tmp_path):
    if not (COLIN.exists() and AAL.exists()):
        pytest.skip("Colin27/AAL absent: apt-get install mricron-data")
    aal_img = sitk.ReadImage(str(AAL))
    aal = sitk.GetArrayFromImage(aal_img)
    part = sitk.GetImageFromArray(np.where(np.isin(aal, STRUCTURES), aal, 0).astype(np.uint8))
    part.CopyInformation(aal_img)
    sitk.WriteImage(part, str(tmp_path / "aal_part.nii.gz"))

    open_listed(page, server, "ch2.nii.gz", 181)
    page.set_input_files("#import", str(tmp_path / "aal_part.nii.gz"))
    wait_idle(page)
    page.wait_for_function("window.imis.S.objects.length === 5")  # 4 imported + the new empty one

    # a lasso around the left caudate on the coronal view through it
    caudate = aal == CAUDATE_L
    y = int(np.round(np.nonzero(caudate)[1].mean()))
    page.keyboard.press("2")
    page.wait_for_function("window.imis.S.axis === 'y'")
    page.evaluate(
        "(i) => { const s = document.getElementById('slice'); s.value = i; s.dispatchEvent(new Event('input')); }",
        y,
    )
    page.wait_for_function("(i) => window.imis.S.index.y === i", arg=y)
    wait_idle(page)
    page.keyboard.press("l")
    drag_path(page, lasso_around(caudate[:, y, :], pad=3, every=3))

    page.keyboard.press("v")
    front = _rendered(page, 0)
    assert page.get_attribute("#img3d", "data-angles") == "0,20"
    shot(page, "colin_3d_view")

    n = _count(page)
    page.evaluate(
        "() => { const s = document.getElementById('az3d'); s.value = 90; s.dispatchEvent(new Event('input')); }"
    )
    side = _rendered(page, n)
    assert page.get_attribute("#img3d", "data-angles") == "90,20" and side != front

    n = _count(page)
    box = page.locator("#img3d").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 60, cy + 20, steps=4)
    page.mouse.up()
    _rendered(page, n)
    page.wait_for_function("document.getElementById('img3d').dataset.angles !== '90,20'")
    wait_idle(page)
    shot(page, "colin_3d_view_turned")
