"""The volume acceptance in a real Chromium: open Colin27 from DATA_DIR, scroll, switch to the coronal
view, box the left thalamus, export NIfTI and compare it with AAL (and the input's geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.app.conftest import AAL, COLIN, shot
from tests.app.helpers import bbox, dice, drag_box, export, label_count, open_listed, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
THALAMUS_L = 77  # AAL value of Thalamus_L (aal.nii.txt: "77 Thalamus_L 7101")


@pytest.fixture(scope="module")
def atlas():
    if not (COLIN.exists() and AAL.exists()):
        pytest.skip("Colin27/AAL absent: apt-get install mricron-data")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(AAL)))


def set_slice(page, index: int) -> None:
    page.evaluate(
        "(i) => { const s = document.getElementById('slice'); s.value = i; s.dispatchEvent(new Event('input')); }",
        index,
    )
    page.wait_for_function("(i) => window.imis.S.index[window.imis.S.axis] === i", arg=index)
    wait_idle(page)


def test_colin27_volume_workflow(page, server, atlas, tmp_path):
    open_listed(page, server, "ch2.nii.gz", 181)
    assert "181" in page.inner_text("#doc-name")

    # scroll the axial view with the wheel
    start = page.evaluate("window.imis.S.index.z")
    page.locator("#canvas").hover()
    for _ in range(5):
        page.mouse.wheel(0, 120)
    page.wait_for_function("(s) => window.imis.S.index.z === s + 5", arg=start)
    wait_idle(page)
    shot(page, "colin_axial")

    # coronal view through the middle of the left thalamus
    thal = atlas == THALAMUS_L
    y = int(np.round(np.nonzero(thal)[1].mean()))
    page.keyboard.press("2")
    page.wait_for_function("window.imis.S.axis === 'y'")
    set_slice(page, y)
    plane_gt = thal[:, y, :]  # rows z, columns x: the plane as the server sends it
    page.keyboard.press("b")
    drag_box(page, *bbox(plane_gt, pad=2))
    assert label_count(page, 1) > 0
    shot(page, "colin_coronal_thalamus")

    out = export(page, "nii.gz", tmp_path)
    img = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(COLIN))
    assert img.GetSize() == ref.GetSize()
    assert np.allclose(img.GetOrigin(), ref.GetOrigin()) and np.allclose(
        img.GetDirection(), ref.GetDirection()
    )
    labels = sitk.GetArrayFromImage(img)
    d = dice(labels[:, y, :] == 1, plane_gt)
    print(f"Colin27 coronal slice {y}: left thalamus box Dice vs AAL {d:.3f}")
    assert d >= 0.7
    assert (labels[:, np.arange(labels.shape[1]) != y, :] == 0).all()

    # propagate through the volume from this slice (3 slices each way), with its progress bar
    page.fill("#max-slices", "3")
    page.click("#propagate")
    wait_idle(page, timeout_ms=300_000)
    assert "Propagated to" in page.inner_text("#message")
    page.keyboard.press("3")  # sagittal view through the thalamus
    page.wait_for_function("window.imis.S.axis === 'x'")
    set_slice(page, int(np.round(np.nonzero(thal)[2].mean())))
    shot(page, "colin_sagittal_propagated")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(export(page, "nii.gz", tmp_path))))
    filled = sorted(set(np.nonzero(labels == 1)[1]))
    print(f"propagated over coronal slices {filled}")
    assert len(filled) >= 4 and y in filled
