"""Fixtures of the automask tests: the real imis-lite model and copies of real btcv-demo slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SLICES = ("ABD_037_71", "ABD_038_74")  # real test-split slices: 11 and 10 organs, two in two regions


def copy_dataset(btcv: Path, out: Path, stems=SLICES) -> Path:
    """A dataset folder holding btcv-demo's image and label files of ``stems``, without imasks."""
    meta = json.loads((btcv / "dataset.json").read_text())
    entries = {Path(e["image"]).stem: e for e in meta["training"] + meta["test"]}
    for sub in ("image", "label"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    test = []
    for s in stems:
        e = entries[s]
        shutil.copy(btcv / e["image"], out / e["image"])
        shutil.copy(btcv / e["label"], out / e["label"])
        test.append({"image": e["image"], "label": e["label"]})
    meta.update(training=[], numTraining=0, test=test, numTest=len(test))
    (out / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return out


@pytest.fixture(scope="session")
def lite():
    from imis.models import load_model
    from imis.models.registry import default_model_name

    if default_model_name() != "imis-lite":
        pytest.skip("imis-lite weights not installed")
    return load_model("imis-lite")


@pytest.fixture(scope="session")
def slice_image(btcv_dir):
    from imis.data.formats import imed

    return imed.read_image(btcv_dir / "image" / f"{SLICES[0]}.png")


@pytest.fixture(scope="session")
def slice_gt(btcv_dir):
    from imis.data.formats import imed

    ds = imed.read_dataset(btcv_dir)
    entry = next(e for e in ds.entries if e.stem == SLICES[0])
    gt = imed.read_label(entry.label)
    return gt, ds.label_names(gt.shape[0])


@pytest.fixture(scope="session")
def lite_embedding(lite, slice_image):
    return lite.encode(slice_image)
