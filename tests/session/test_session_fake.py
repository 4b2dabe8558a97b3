"""The Session's bookkeeping (undo/redo, commit, the embedding cache, refinement, prompt checks) with a
deterministic model without weights (fake_model.py); test_session.py runs the same API on real weights."""

from __future__ import annotations

import numpy as np
import pytest
from fake_model import FakeModel

from imis.errors import InputError, PromptError
from imis.models.interactive import PromptableModel
from imis.session import Session


@pytest.fixture()
def session():
    s = Session(FakeModel(), cache_size=2)
    s.set_image(np.zeros((40, 60), np.uint8))
    return s


def test_the_fake_implements_the_model_interface():
    assert isinstance(FakeModel(), PromptableModel)


def test_undo_redo_reset(session):
    first = session.predict(box=(10, 5, 20, 15))
    assert first.mask.sum() == 11 * 11
    second = session.add_click(30, 20, True)
    assert session.history[1].box == (10.0, 5.0, 20.0, 15.0)  # refinement keeps the box ...
    assert session.history[1].clicks == ((30.0, 20.0, True),)
    assert session.model.calls[-1].mask_logits is not None  # ... and feeds the previous logits back
    assert np.array_equal(session.model.calls[-1].mask_logits.numpy()[0, 0] > 0, first.mask)
    assert session.undo() is first and session.current is first
    assert session.undo() is None and session.undo() is None  # nothing more to undo
    assert session.redo() is first and session.redo() is second and session.redo() is second
    session.undo()
    third = session.predict(clicks=[(5, 5, True)])  # a new step clears the redo stack
    assert session.redo() is third
    session.reset()
    assert session.current is None and session.history == []


def test_commit_never_overwrites_earlier_objects(session):
    session.predict(box=(10, 10, 30, 30))
    assert session.commit() == 1
    lm = session.label_map
    assert (lm == 1).sum() == 21 * 21 and session.current is None
    session.predict(box=(20, 20, 40, 35))
    assert session.commit(7) == 7
    lm2 = session.label_map
    assert np.array_equal(lm2 == 1, lm == 1)
    assert (lm2 == 7).sum() == 21 * 16 - 11 * 11  # the overlap stays object 1
    session.predict(box=(0, 0, 3, 3))
    assert session.commit() == 8  # the next free label after 7
    with pytest.raises(PromptError, match="nothing to commit"):
        session.commit()
    session.predict(box=(0, 0, 3, 3))
    with pytest.raises(PromptError, match="label 0 outside"):
        session.commit(0)
    lm3 = session.label_map
    lm3[:] = 0  # label_map is a copy
    assert session.label_map.any()


def test_embedding_cache_is_lru(session):
    model = session.model
    image = np.zeros((40, 60), np.uint8)
    other = np.ones((40, 60), np.uint8)
    session.set_image(other)
    session.set_image(image)
    assert model.encodes == 2 and session.cache_stats.hits == 1
    session.set_image(np.full((40, 60), 2, np.uint8))  # evicts the least recently used (other)
    session.set_image(other)
    assert model.encodes == 4
    session.set_image(image.astype(np.uint16))  # same pixels, another dtype: another image
    assert model.encodes == 5


def test_volume_slices_and_new_image_starts_fresh(session):
    vol = np.arange(5 * 40 * 60, dtype=np.int16).reshape(5, 40, 60)
    session.predict(box=(1, 1, 5, 5))
    session.set_image(vol, axis="z", index=2)
    assert session.image_shape == (40, 60) and session.current is None
    assert not session.label_map.any()
    session.set_image(vol, axis="x", index=10)
    assert session.image_shape == (5, 40)
    with pytest.raises(InputError, match="outside axis"):
        session.set_image(vol, axis="z", index=5)
    with pytest.raises(InputError, match="axis and a slice index"):
        session.set_image(vol)


def test_bad_prompts(session):
    with pytest.raises(PromptError, match="outside the 60x40 image"):
        session.predict(clicks=[(60, 10, True)])
    with pytest.raises(PromptError, match="extends outside"):
        session.predict(box=(-5, 10, 20, 20))
    with pytest.raises(PromptError, match="empty"):
        session.predict(box=(30, 10, 20, 20))
    with pytest.raises(PromptError, match="does not support text"):
        session.predict(text="liver")
    with pytest.raises(PromptError, match="no image set"):
        Session(FakeModel()).predict(box=(1, 1, 5, 5))
