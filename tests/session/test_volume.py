"""VolumeSession on Colin27 + AAL with the real imis-lite model (a handful of slice encodes in all)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imis.bench.metrics import dice
from imis.errors import InputError, PromptError
from imis.io import Geometry, read_image, slice_volume
from imis.prompts import tight_box
from imis.session import PropagationRules, VolumeSession

TEMPLATES = Path("/usr/share/mricron/templates")
THALAMUS_L = 77


@pytest.fixture(scope="module")
def colin():
    if not (TEMPLATES / "ch2.nii.gz").is_file():
        pytest.skip("mricron-data (Colin27, AAL) is not installed")
    return read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")


@pytest.fixture(scope="module")
def model():
    from imis.models import load_model

    return load_model("imis-lite")


@pytest.fixture(scope="module")
def session(model, colin):
    vs = VolumeSession(model, cache_size=8)
    vs.open(colin[0])
    return vs


@pytest.fixture()
def thalamus(colin):
    gt = colin[1].array == THALAMUS_L
    return gt, int(np.argmax(gt.sum(axis=(1, 2))))


def test_refuses_2d_images_and_bad_slices(model, colin):
    vs = VolumeSession(model, cache_size=1)
    with pytest.raises(InputError, match="2D image"):
        vs.open(slice_volume(colin[0], "z", 90))
    vs.open(colin[0])
    with pytest.raises(InputError, match=r"slice 181 is out of range for axis z .*valid 0..180"):
        vs.set_slice("z", 181)
    with pytest.raises(InputError, match="axis 'w'"):
        vs.set_slice("w", 3)
    with pytest.raises(PromptError, match="set_slice"):
        vs.predict(box=(1, 1, 5, 5))


def test_box_on_a_slice_then_propagate_undo_redo(session, thalamus):
    gt, k = thalamus
    session.reset()
    session.set_slice("z", k)
    pred = session.predict(box=tight_box(gt[k]))
    assert dice(pred.mask, gt[k]) > 0.8
    assert np.array_equal(session.object_mask[k], pred.mask)
    calls = []
    res = session.propagate(
        direction="up", rules=PropagationRules(max_slices=1), progress=lambda d, t: calls.append((d, t))
    )
    assert res.slices == [k + 1] and res.stops["up"] == (None, "limit")
    assert calls[-1] == (1, 1)
    filled = session.object_mask
    assert dice(filled[k + 1], gt[k + 1]) > 0.7
    assert session.undo()  # the propagation, one step across slices
    assert not session.object_mask[k + 1].any() and session.object_mask[k].any()
    assert session.redo()
    assert np.array_equal(session.object_mask, filled)
    assert session.anchors("z") == [k]


def test_committed_objects_never_overwrite_each_other(session, thalamus):
    gt, k = thalamus
    session.reset()
    session.set_slice("z", k)
    first = session.predict(box=tight_box(gt[k])).mask
    a = session.commit(name="Thalamus_L")
    x0, y0, x1, y1 = tight_box(gt[k])
    session.predict(box=(max(0, x0 - 15), y0, x1, y1))  # a larger object overlapping the first
    b = session.commit(name="bigger")
    labels = session.label_map
    assert (a, b) == (1, 2)
    assert np.array_equal(labels[k] == a, first)
    assert [o.name for o in session.objects] == ["Thalamus_L", "bigger"]
    with pytest.raises(PromptError, match="already object"):
        session.predict(box=tight_box(gt[k]))
        session.commit(label=a)
    session.reset()
    session.select(b)  # reopened with its history: undo empties it on slice k
    assert not (session.label_map == b).any()
    assert session.undo() and not session.object_mask.any()
    session.reset()
    session.remove(a)
    assert session.objects == []


def test_prompts_on_a_y_slice_land_on_the_same_voxels(session, thalamus):
    """A y slice is (z, x): x = column, y = row = z index. The mask lands at volume[:, j, :]."""
    gt, _ = thalamus
    j = int(np.argmax(gt.sum(axis=(0, 2))))
    plane = gt[:, j, :]
    session.reset()
    session.set_slice("y", j)
    assert session.slice_image("y", j).shape == plane.shape
    pred = session.predict(box=tight_box(plane))
    assert dice(pred.mask, plane) > 0.7
    vol = session.object_mask
    assert np.array_equal(vol[:, j, :], pred.mask) and vol.sum() == pred.mask.sum()
    session.reset()


def test_import_labels_checks_geometry(session, colin):
    aal = colin[1]
    moved = type(aal)(
        array=aal.array,
        geometry=Geometry(
            spacing=aal.geometry.spacing, origin=(0.0, 0.0, 0.0), direction=aal.geometry.direction
        ),
        path=aal.path,
        kind="volume",
    )
    with pytest.raises(InputError, match="origin .* differs"):
        session.import_labels(moved)
    with pytest.raises(InputError, match="does not match the volume"):
        session.import_labels(aal.array[:, :, :-1])
    vs = VolumeSession(session.model, cache_size=1)
    vs.open(colin[0])
    sub = np.where(np.isin(aal.array, [77, 78]), aal.array, 0).astype(np.uint8)
    assert vs.import_labels(sub, names={77: "Thalamus_L"}) == [77, 78]
    assert vs.objects[0].name == "Thalamus_L" and vs.objects[0].voxels == int((aal.array == 77).sum())


def test_embeddings_are_cached_per_slice_in_an_lru(session):
    stats = session.cache_stats
    before = stats.encodes
    session.set_slice("z", 5)
    session.set_slice("z", 5)
    assert stats.encodes == before + 1 and stats.hits >= 1


def test_batched_encoding_matches_one_at_a_time(model, colin):
    """Propagation encodes slices in batches: the embeddings must be those of single-slice encoding."""
    import torch

    a, b = colin[0].array[60], colin[0].array[100]
    batch = model.encode_batch([a, b])
    for img, emb in zip((a, b), batch, strict=True):
        one = model.encode(img)
        assert emb.features.shape == one.features.shape and emb.frame == one.frame
        assert torch.allclose(emb.features, one.features, atol=1e-4)


def test_reach_stop_and_model_signals_on_a_short_walk(session, thalamus, colin):
    """The shape-prior stop ends the walk at the reach asked for; every visited slice carries the model's
    own signals; the default prompt (box + mask + interior click) keeps the thalamus."""
    from imis.session.propagation import default_rules, seed_reach

    gt, k = thalamus
    session.reset()
    session.set_slice("z", k)
    pred = session.predict(box=tight_box(gt[k]))
    per_slice = seed_reach(int(pred.mask.sum()), tuple(reversed(colin[0].geometry.spacing)), 0)
    only_reach = dict(min_quality=0.0, min_seed_ratio=0.0, max_growth=float("inf"), min_stability=0.0)
    rules = replace(default_rules("box"), max_reach=2.5 * per_slice, **only_reach, min_quality_ratio=0.0)
    res = session.propagate(rules=rules)
    assert res.slices == [k - 2, k - 1, k + 1, k + 2]
    assert res.stops == {"down": (k - 3, "too far"), "up": (k + 3, "too far")}
    for r in res.records:
        assert 0.0 < r.stability <= 1.0 and 0.0 < r.iou_prev <= 1.0 and r.quality_ratio > 0.0
        assert r.reach == pytest.approx(abs(r.index - k) * per_slice)
    vol = session.object_mask
    assert all(dice(vol[i], gt[i]) > 0.6 for i in res.slices)
    assert not vol[k + 3].any() and not vol[k - 3].any()
    session.reset()


def test_click_seed_gets_the_click_rules(session, thalamus):
    from imis.prompts import center_click
    from imis.session.propagation import CLICK_SEED_RULES, default_rules, seed_kind

    gt, k = thalamus
    session.reset()
    session.set_slice("z", k)
    c = center_click(gt[k])
    session.predict(clicks=[(c.x, c.y, True)])
    assert seed_kind(session, (0, k)) == "click"
    assert default_rules("click") is CLICK_SEED_RULES
    # a limit (the app's) keeps the seed's rules
    res = session.propagate(direction="up", max_slices=1)
    assert res.rules == replace(CLICK_SEED_RULES, max_slices=1) and len(res.slices) <= 2
    session.undo()
    session.predict(box=tight_box(gt[k]))
    assert seed_kind(session, (0, k)) == "box"
    session.reset()


def test_orthogonal_refinement_is_one_undoable_step_in_the_volume_geometry(
    session, thalamus, colin, tmp_path
):
    """A short walk through a small part of the thalamus, then orthogonal refinement: the mask stays on
    the volume's voxel grid (its label map is written and read back with the input's geometry), the
    refinement is one undo step, and only the slices it changed are recorded."""
    from imis.io import write_label_map
    from imis.session.orthogonal import RefineOptions

    gt, k = thalamus
    session.reset()
    session.set_slice("z", k)
    x0, y0, x1, y1 = tight_box(gt[k])
    # a 6 x 6 px box inside the thalamus keeps the other axes' slices (and their encodes) few
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    session.predict(box=(cx - 3, cy - 3, cx + 3, cy + 3))
    no_stop = dict(min_quality=0.0, max_growth=float("inf"), min_seed_ratio=0.0, max_reach=float("inf"))
    session.propagate(rules=PropagationRules(max_slices=1, **no_stop))
    walked = session.object_mask
    assert walked[k - 1 : k + 2].any(axis=(1, 2)).all()
    refined = session.refine_orthogonal(RefineOptions(combine="vote"))
    assert refined.shape == walked.shape and np.array_equal(session.object_mask, refined)
    assert refined.any() and dice(refined, walked) > 0.5  # a consensus of the walk, not a new object
    action = session.history[-1]
    assert action.kind == "refine" and all(a == 0 for a, _ in action.planes)
    assert session.undo() and np.array_equal(session.object_mask, walked)
    assert session.redo() and np.array_equal(session.object_mask, refined)
    label = session.commit(name="thalamus part")
    out = write_label_map(tmp_path / "refined.nii.gz", session.label_map, reference=colin[0])
    back = read_image(out)
    assert back.array.shape == colin[0].array.shape
    assert np.allclose(back.geometry.origin, colin[0].geometry.origin)
    assert np.allclose(back.geometry.direction, colin[0].geometry.direction)
    assert np.array_equal(back.array == label, refined)
    session.remove(label)


def test_refinement_refuses_an_empty_object_and_unknown_options(session):
    from imis.session.orthogonal import RefineOptions

    session.reset()
    session.set_slice("z", 90)
    with pytest.raises(PromptError, match="nothing to refine"):
        session.refine_orthogonal()
    with pytest.raises(PromptError, match=r"refine combine 'mean': one of vote, orthogonal-and"):
        RefineOptions(combine="mean")
    with pytest.raises(InputError, match="axis 'w'"):
        session.predict(box=(100, 100, 110, 110))
        session.refine_orthogonal(axis="w")
    session.reset()
