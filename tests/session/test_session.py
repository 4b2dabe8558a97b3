"""Session API on real data with the real LiteMedSAM weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imis.bench.metrics import dice
from imis.data.formats import imed
from imis.errors import InputError, PromptError
from imis.prompts import tight_box
from imis.session import Session

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")


@pytest.fixture(scope="module")
def liver_slice(btcv_dir):
    image = imed.read_image(btcv_dir / "image" / "ABD_001_100.png")
    labels = imed.read_label(btcv_dir / "label" / "x___ABD_001_100.(13, 512, 512, 1).npz")
    return image, labels


def test_box_dice_on_btcv_test_split(litemedsam, btcv_dir):
    """LiteMedSAM's known quality with tight boxes: mask-level mean Dice about 0.68 on the test split."""
    ds = imed.read_dataset(btcv_dir)
    session = Session(litemedsam, cache_size=1)
    scores = []
    for entry in ds.split("test"):
        session.set_image(imed.read_image(entry.image))
        labels = imed.read_label(entry.label)
        for gt in labels:
            if gt.any():
                scores.append(dice(session.predict(box=tight_box(gt)).mask, gt))
                session.reset()
    assert len(scores) == 85  # non-empty GT masks of cases 037-039
    assert 0.65 <= float(np.mean(scores)) <= 0.71, np.mean(scores)


def test_liver_box_matches_parity_fixture_dice(litemedsam, liver_slice, parity_dir):
    import torch

    fixture = torch.load(parity_dir / "litemedsam_btcv_liver.pt", weights_only=False)
    image, labels = liver_slice
    gt = labels[5]
    box = tight_box(gt)
    # The fixture's box in the 256 frame is our tight box scaled by 256/512.
    assert np.allclose(np.array(box) * 0.5, fixture["box_256"].numpy()[0])
    session = Session(litemedsam)
    session.set_image(image)
    pred = session.predict(box=box)
    assert abs(dice(pred.mask, gt) - fixture["dice_vs_gt"]) < 0.005
    assert pred.mask.shape == (512, 512)
    assert pred.low_res_logits.shape == (1, 1, 256, 256)
    assert abs(pred.quality - float(fixture["iou"])) < 1e-3


def test_undo_redo_reset_commit(litemedsam, liver_slice):
    image, labels = liver_slice
    session = Session(litemedsam)
    session.set_image(image)
    liver = labels[5]
    other = next(m for i, m in enumerate(labels) if i != 5 and m.sum() > 500)
    first = session.predict(box=tight_box(liver))
    second = session.add_click(*_centre(liver), True)
    assert len(session.history) == 2
    assert session.history[1].box == session.history[0].box  # refinement keeps the box
    assert session.undo() is first
    assert session.redo() is second
    assert session.redo() is second  # nothing more to redo
    session.undo()
    third = session.predict(box=tight_box(liver))  # a new step clears the redo stack
    assert session.redo() is third
    label = session.commit()
    assert label == 1
    lm = session.label_map
    assert (lm == 1).sum() == third.mask.sum()
    assert session.current is None  # commit starts a new object
    session.predict(box=tight_box(other))
    session.commit(7)
    lm2 = session.label_map
    # committed objects are never overwritten by later ones
    assert np.array_equal(lm2 == 1, lm == 1)
    assert ((lm2 == 7) & (lm == 1)).sum() == 0
    session.predict(box=tight_box(other))
    session.reset()
    assert session.current is None and session.history == []
    with pytest.raises(PromptError, match="nothing to commit"):
        session.commit()


def _centre(mask: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(np.argmax(dist), mask.shape)
    return int(x), int(y)


def test_cache_hits_do_not_reencode(litemedsam, liver_slice):
    image, _ = liver_slice
    other = image[::-1].copy()
    session = Session(litemedsam, cache_size=2)
    session.set_image(image)
    session.set_image(other)
    session.set_image(image)
    assert (session.cache_stats.encodes, session.cache_stats.hits) == (2, 1)
    session.set_image(image[:, ::-1].copy())  # third image evicts the least recently used (other)
    session.set_image(other)
    assert session.cache_stats.encodes == 4


def test_volume_slices_cached_lru():
    pytest.importorskip("SimpleITK")
    if not COLIN.is_file():
        pytest.skip("Colin27 not installed (apt-get install mricron-data)")
    import SimpleITK as sitk

    from imis.models import load_model

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN)))
    session = Session(load_model("litemedsam"), cache_size=3)
    for z in (80, 81, 82, 80, 81, 83, 80):
        session.set_image(vol, axis="z", index=z)
    assert session.cache_stats.encodes == 4 and session.cache_stats.hits == 3
    session.set_image(vol, axis="x", index=90)
    assert session.image_shape == (181, 217)
    with pytest.raises(InputError, match="outside axis"):
        session.set_image(vol, axis="z", index=181)
    with pytest.raises(InputError, match="axis and a slice index"):
        session.set_image(vol)


def test_non_square_coordinates_round_trip(litemedsam, liver_slice):
    """Non-square crops: the mask lands where the object is, in native pixels.

    The crops keep the longest side (512), so the network sees the liver at the same scale as in the
    full image; the crop's mask must then nearly coincide with the full image's mask cut the same way.
    """
    image, labels = liver_slice
    gt = labels[5]
    session = Session(litemedsam)
    session.set_image(image)
    full = session.predict(box=tight_box(gt)).mask
    for rows, cols in ((slice(0, 430), slice(0, 512)), (slice(0, 512), slice(0, 400))):
        img, g = image[rows, cols], gt[rows, cols]
        session.set_image(img)
        pred = session.predict(box=tight_box(g))
        assert pred.mask.shape == g.shape
        # LiteMedSAM reacts to the changed context (padding instead of body), hence not ~1.0; a
        # coordinate or scale error would drop these far lower.
        assert dice(pred.mask, full[rows, cols]) > 0.9
        assert dice(pred.mask, g) > 0.7
        # transposing the image transposes the result
        session.set_image(np.ascontiguousarray(img.transpose(1, 0, 2)))
        x0, y0, x1, y1 = tight_box(g)
        pred_t = session.predict(box=(y0, x0, y1, x1))
        assert dice(pred_t.mask.T, g) > 0.6  # a swapped x/y would miss the liver entirely


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(np.uint16) * 257,
        lambda a: a.astype(np.int16) - 1024,
        lambda a: a.astype(np.float32) * 3.7 - 1000.0,
        lambda a: a.astype(np.float64) / 255.0,
        lambda a: (a.astype(np.int32) - 128).astype(np.int8),
        lambda a: a[..., 0],  # grey
    ],
    ids=["uint16", "int16", "float32", "float64", "int8", "grey-uint8"],
)
def test_every_dtype_gives_the_same_mask(litemedsam, liver_slice, convert):
    image, labels = liver_slice
    box = tight_box(labels[5])
    session = Session(litemedsam)
    session.set_image(image)
    ref = session.predict(box=box).mask
    session.set_image(convert(image))
    assert dice(session.predict(box=box).mask, ref) > 0.99


def test_bad_prompts_and_images(litemedsam, liver_slice):
    image, _ = liver_slice
    session = Session(litemedsam)
    with pytest.raises(PromptError, match="no image set"):
        session.predict(box=(1, 1, 5, 5))
    session.set_image(image)
    with pytest.raises(PromptError, match="outside the 512x512 image"):
        session.predict(clicks=[(600, 10, True)])
    with pytest.raises(PromptError, match="outside"):
        session.predict(box=(600, 600, 700, 700))
    with pytest.raises(PromptError, match="extends outside"):
        session.predict(box=(-5, 10, 100, 100))
    with pytest.raises(PromptError, match="empty"):
        session.predict(box=(50, 50, 40, 60))
    with pytest.raises(PromptError, match="does not support text"):
        session.predict(text="liver")
    with pytest.raises(PromptError, match="no prompt"):
        session.predict()
    with pytest.raises(InputError, match="too small"):
        session.set_image(np.zeros((1, 1), np.uint8))
    with pytest.raises(InputError, match="NaN or Inf"):
        bad = image.astype(np.float32)
        bad[3, 3, 0] = np.nan
        session.set_image(bad)
    with pytest.raises(InputError, match="NaN or Inf"):
        bad = image.astype(np.float32)
        bad[3, 3, 0] = np.inf
        session.set_image(bad)
    with pytest.raises(InputError, match="expected a 2D image"):
        session.set_image(np.zeros((2, 3, 4, 5), np.uint8))
