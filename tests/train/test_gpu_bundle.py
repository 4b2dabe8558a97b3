"""scripts/gpu_bundle.py: a bundle for a lent GPU trains on exactly what the original config trains on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from train_helpers import tiny_config, write_config

from imis.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_bundle():
    if not Path("/usr/share/mricron/templates/aal.nii.gz").is_file():
        pytest.skip("mricron-data absent (the bundle's brain label cache is made from it)")
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "scripts" / "gpu_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _targets(images):
    return [(im.stem, [(t.name, t.mask.tobytes()) for t in im.gt + im.imask]) for im in images]


def test_a_bundle_holds_what_the_config_reads_and_loads_the_same(gpu_bundle, btcv_dir, tmp_path):
    from imis.data.formats.imed import read_image
    from imis.models.preprocess import Preprocess
    from imis.train.data import load_images

    synthetic = {
        "kind": "synthetic",
        "path": str(tmp_path / "syn"),
        "btcv": str(btcv_dir),
        "count": 3,
        "sources": ["shapes", "aal"],
        "exclude_cases": ["ABD_034"],
    }
    real = {"path": str(btcv_dir), "split": "train", "exclude_cases": ["ABD_034"], "every": 20}
    val = [{"path": str(btcv_dir), "split": "train", "cases": ["ABD_034"], "max_images": 2}]
    cfg = tiny_config(
        btcv_dir, tmp_path / "run", tmp_path / "cache", datasets=[real, synthetic], val_datasets=val
    )
    original = write_config(tmp_path / "tiny.yaml", cfg)
    bundle = tmp_path / "bundle"
    assert gpu_bundle.main([str(original), "--out", str(bundle), "--budget-mb", "1000"]) == 0

    packed = load_train_config(bundle / "configs" / "tiny.yaml")
    before = load_train_config(original)
    for a, b in zip(
        before.datasets + before.val_datasets, packed.datasets + packed.val_datasets, strict=True
    ):
        assert Path(b.path).is_relative_to(bundle) or b.kind == "synthetic"
        got = load_images(b, Preprocess(), 64)
        assert _targets(load_images(a, Preprocess(), 64)) == _targets(got)
        if b.kind == "imed":
            for im in got:  # re-encoded grey where the channels were equal: the same pixels
                orig = read_image(Path(a.path) / "image" / im.path.name)
                assert np.array_equal(read_image(im.path), orig[..., 0])
    syn = packed.datasets[1]
    assert syn.label_cache and syn.exclude_cases == () and Path(syn.btcv).is_relative_to(bundle)
    # the text cache goes there (imis-lite's MiniLM; this tiny model's text tower is its own, uncached)
    assert Path(packed.embedding_cache) == (bundle / "cache").resolve() and (bundle / "run.sh").is_file()
    assert str(bundle / "configs") in (bundle / "run.sh").read_text()

    assert gpu_bundle.main([str(original), "--out", str(tmp_path / "b2"), "--budget-mb", "0.01"]) == 1
