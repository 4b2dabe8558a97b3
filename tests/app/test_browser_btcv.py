"""The acceptance in a real Chromium, on btcv-demo with the real imis-lite: click the liver (Dice >= 0.8
read back through the export), a negative click, undo/redo, a box on the spleen, text "left kidney",
next object, NIfTI export read back with the input's geometry; then a reload restores the session."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.app.conftest import shot
from tests.app.helpers import (
    BTCV_CASE,
    KIDNEY_LEFT,
    LIVER,
    SPLEEN,
    bbox,
    btcv_label,
    click_pixel,
    dice,
    drag_box,
    export,
    interior_point,
    label_count,
    open_upload,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def read_labels(path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def test_btcv_slice_workflow(page, server, btcv_dir, tmp_path):
    liver = btcv_label(btcv_dir, BTCV_CASE, LIVER)
    spleen = btcv_label(btcv_dir, BTCV_CASE, SPLEEN)
    kidney = btcv_label(btcv_dir, BTCV_CASE, KIDNEY_LEFT)
    open_upload(page, server, btcv_dir / "image" / f"{BTCV_CASE}.png")
    assert "imis-lite" in page.inner_text("#model") and "Apache-2.0" in page.inner_text("#model")

    # 1. one positive click on the liver
    click_pixel(page, *interior_point(liver))
    assert int(page.get_attribute("#latency", "data-ms")) > 0
    after_click = label_count(page, 1)
    shot(page, "btcv_liver_click")
    labels, _ = read_labels(export(page, "nii.gz", tmp_path))
    d_liver = dice(labels.reshape(512, 512) == 1, liver)
    print(f"liver one click Dice {d_liver:.3f}")
    assert d_liver >= 0.8

    # 2. a negative click outside the liver, then undo and redo
    nx, ny = interior_point(~liver & (np.arange(512)[None, :] < 256) & (np.arange(512)[:, None] > 150))
    click_pixel(page, nx, ny, button="right")
    after_neg = label_count(page, 1)
    print(
        f"negative click, cached embedding: {page.get_attribute('#latency', 'data-ms')} ms to the mask shown"
    )
    assert page.locator("#undo").is_enabled()
    page.keyboard.press("Control+z")
    wait_idle(page)
    assert label_count(page, 1) == after_click
    page.keyboard.press("Control+y")
    wait_idle(page)
    assert label_count(page, 1) == after_neg

    # 3. next object: a box on the spleen
    page.keyboard.press("m")
    wait_idle(page)
    page.keyboard.press("b")
    drag_box(page, *bbox(spleen, pad=3))
    shot(page, "btcv_spleen_box")

    # 4. next object: text "left kidney"
    page.keyboard.press("m")
    wait_idle(page)
    page.fill("#text", "left kidney")
    page.press("#text", "Enter")
    wait_idle(page)
    assert page.locator("#objects li").count() == 3
    page.locator("#objects li").nth(2).locator("input.name").fill("left kidney")
    page.locator("#objects li").nth(2).locator("input.name").press("Enter")
    wait_idle(page)
    shot(page, "btcv_three_objects")

    # 5. export NIfTI and read it back: the geometry of the input (a PNG: unit spacing, origin 0)
    labels, img = read_labels(export(page, "nii.gz", tmp_path))
    labels = labels.reshape(512, 512)
    assert img.GetSize()[:2] == (512, 512) and img.GetSpacing()[:2] == (1.0, 1.0)
    scores = {
        n: dice(labels == v, gt)
        for n, v, gt in (("liver", 1, liver), ("spleen", 2, spleen), ("kidney", 3, kidney))
    }
    print("btcv Dice after the workflow:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["liver"] >= 0.8 and scores["spleen"] >= 0.8 and scores["kidney"] >= 0.5
    assert not ((labels == 1) & (labels == 2)).any()

    # 6. a reload restores the session from the server
    page.reload()
    wait_idle(page)
    page.wait_for_function("window.imis.S.objects.length === 3")
    assert page.locator("#objects li").nth(2).locator("input.name").input_value() == "left kidney"
    assert label_count(page, 2) > 0
