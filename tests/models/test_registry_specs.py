"""Every registry entry, through its one spec: a small build of its architecture, its weight layout
converted there and back, and a save and load of our own format that keeps the model's recipe, text path
and predictions (random weights: the real ones are tested in test_registry.py and the parity tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import small_registry_model

from imis.models.formats import load_strict
from imis.models.interactive import PromptableModel, PromptSpec
from imis.models.registry import (
    ARCHITECTURES,
    LAYOUTS,
    REGISTRY,
    load_model,
    save_checkpoint,
    spec_for_architecture,
)


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def small(request):
    """(spec, model) of one registry entry at its architecture's small size, random weights (seeded)."""
    return small_registry_model(request.param)


def test_spec_is_consistent(small):
    spec, model = small
    assert spec.arch in ARCHITECTURES and spec.layout in LAYOUTS
    assert spec.prompt_types <= model.net.prompt_types, "the spec promises prompts the network cannot take"
    assert (spec.text_tower is not None) == ("text" in spec.prompt_types)
    assert spec.layout_description
    assert spec_for_architecture(spec.arch).arch == spec.arch
    assert isinstance(model, PromptableModel) and model.spec is spec


def test_layout_round_trip(small):
    spec, model = small
    internal = model.net.state_dict()
    foreign = spec.weight_layout.to_foreign(internal)
    back = spec.convert(foreign)
    assert back.keys() <= internal.keys()
    assert all(torch.equal(back[k], internal[k]) for k in back)
    # a foreign layout may lack only the text projection our models add on top (imis-lite over
    # LiteMedSAM's layout: its own weights ship in our format)
    assert all(k.startswith("text_projection.") for k in internal.keys() - back.keys())
    if back.keys() == internal.keys():
        load_strict(spec.build(), back, spec.layout)  # every key fits, none left over


def test_save_and_load_keep_the_model(small, tmp_path):
    spec, model = small
    path = tmp_path / f"{spec.name}.pt"
    save_checkpoint(path, model, metadata={"note": "small"})  # the architecture comes from model.spec
    again = load_model(checkpoint=path)
    s = again.spec
    assert (s.name, s.arch, s.arch_kwargs, s.layout) == (spec.name, spec.arch, spec.arch_kwargs, spec.layout)
    assert (s.preprocess, s.multimask, s.prompt_types, s.license) == (
        spec.preprocess,
        spec.multimask,
        spec.prompt_types,
        spec.license,
    )
    assert (s.text_tower, s.text_template) == (spec.text_tower, spec.text_template)
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    box = PromptSpec(box=np.array([5, 8, 30, 40], np.float64))
    click = PromptSpec(points=np.array([[20.0, 24.0]]), labels=np.array([1]))
    prompts = [
        p for p, kind in ((box, "box"), (click, "point")) if kind in spec.prompt_types
    ]  # huang2024: box only
    for m in ("single", "best_iou"):
        for prompt in prompts:
            a = model.decode(model.encode(image), prompt, multimask=m)
            b = again.decode(again.encode(image), prompt, multimask=m)
            assert np.array_equal(a.logits, b.logits) and a.quality == b.quality
