"""SA-Med2D-20M layout: a folder made from btcv-demo reads back identically; names parse as released."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from imis.data.formats import imed, samed2d
from imis.errors import InputError

IMAGE_RE = re.compile(r"^ct_00--BTCV--ABD_0\d\d--z_\d{4}\.png$")
MASK_RE = re.compile(r"^ct_00--BTCV--ABD_0\d\d--z_\d{4}--\d{4}_\d{3}\.png$")


@pytest.fixture(scope="module")
def btcv_samples(btcv_dir):
    ds = imed.read_dataset(btcv_dir)
    return ds, list(imed.iter_samples(ds, "test", with_imask=False))


@pytest.fixture(scope="module")
def samed_root(btcv_samples, tmp_path_factory):
    ds, samples = btcv_samples
    root = tmp_path_factory.mktemp("samed2d")
    samed2d.write_dataset(root, samples, label_ids={v: k for k, v in ds.labels.items()}, default_axis="z")
    return root


def _same(a, b):
    assert a.image.dtype == b.image.dtype and np.array_equal(a.image, b.image)
    assert list(a.masks) == list(b.masks)
    for k in a.masks:
        assert np.array_equal(a.masks[k], b.masks[k]), k


def test_samed2d_from_btcv_reads_back_identically(btcv_samples, samed_root):
    ds, samples = btcv_samples
    index = json.loads((samed_root / samed2d.INDEX_NAME).read_text())
    assert len(index) == len(samples)
    for image_rel, masks in index.items():
        assert image_rel.startswith("images/") and IMAGE_RE.match(image_rel[len("images/") :])
        assert (samed_root / image_rel).is_file()
        for m in masks:
            assert m.startswith("masks/") and MASK_RE.match(m[len("masks/") :]) and (samed_root / m).is_file()
    mapping = json.loads((samed_root / samed2d.CLASS_MAP_NAME).read_text())
    assert set(mapping) == {"BTCV"}
    assert all(ds.labels[v] == k for k, v in mapping["BTCV"].items())
    back = list(samed2d.iter_samples(samed_root))
    assert len(back) == len(samples)
    for a, b in zip(samples, back, strict=True):
        _same(a, b)
        assert b.dataset == "BTCV" and b.modality == "ct" and b.split is None and b.imask is None
        assert b.provenance["case"] == a.provenance["case"] and b.provenance["slice"] == a.provenance["slice"]
        assert b.provenance["axis"] == "z" and b.provenance["modality_token"] == "ct_00"
        assert b.id == f"ct_00--BTCV--{a.provenance['case']}--z_{a.provenance['slice']:04d}"


def test_reader_variants(btcv_samples, samed_root, tmp_path):
    _, samples = btcv_samples
    # no JSON index: images/ and masks/ are matched by name; "_" before the label id; JSONs in annotations/
    alt = tmp_path / "alt"
    shutil.copytree(samed_root, alt)
    (alt / samed2d.INDEX_NAME).unlink()
    (alt / "annotations").mkdir()
    (alt / samed2d.CLASS_MAP_NAME).rename(alt / "annotations" / samed2d.CLASS_MAP_NAME)
    for p in sorted((alt / "masks").iterdir()):
        image_stem, label, inst = samed2d.parse_mask_stem(p.stem)
        p.rename(p.with_name(f"{image_stem}_{label:04d}_{inst:03d}.png"))
    back = {s.id: s for s in samed2d.iter_samples(alt)}
    ordered = [back[s] for s in sorted(back)]
    for a, b in zip(
        sorted(samples, key=lambda s: (s.provenance["case"], s.provenance["slice"])), ordered, strict=True
    ):
        _same(a, b)
    assert [s.id for s in samed2d.iter_samples(alt, datasets=["other"])] == []
    assert len(list(samed2d.iter_samples(alt, modalities=["ct_00"]))) == len(samples)


def test_instances_split_and_merged(btcv_samples, tmp_path):
    meta, samples = btcv_samples
    sub = samples[:3]
    ids = {v: k for k, v in meta.labels.items()}
    ds = samed2d.write_dataset(tmp_path, sub, label_ids=ids, split_instances=True, default_axis="z")
    for a, b in zip(sub, samed2d.iter_samples(ds), strict=True):
        _same(a, b)
    per_instance = next(samed2d.iter_samples(ds, merge_instances=False))
    liver = [k for k in per_instance.masks if k.startswith("liver_")]
    assert liver and np.array_equal(
        np.any([per_instance.masks[k] for k in liver], axis=0), sub[0].masks["liver"]
    )


def test_name_parsing():
    n = samed2d.parse_image_stem("mr_t1--Brain_PTM--case0005--x_0052")
    assert (n.modality_token, n.modality, n.dataset, n.case, n.axis, n.slice) == (
        "mr_t1",
        "mr_t1",
        "Brain_PTM",
        "case0005",
        "x",
        52,
    )
    n = samed2d.parse_image_stem("ct_00--AbdomenCT1K--Case_00011--x_0040")
    assert (n.modality, n.case, n.axis, n.slice) == ("ct", "Case_00011", "x", 40)
    n = samed2d.parse_image_stem("dermoscopy_00--isic2016_task1--ISIC_0000000--2d_none")
    assert (n.modality, n.axis, n.slice) == ("dermoscopy", None, None)
    assert samed2d.parse_mask_stem("ct_00--AbdomenCT1K--Case_00011--x_0041--0000_001") == (
        "ct_00--AbdomenCT1K--Case_00011--x_0041",
        0,
        1,
    )
    assert samed2d.parse_mask_stem("a--b--c--z_0001_0003_000") == ("a--b--c--z_0001", 3, 0)
    assert samed2d.format_image_stem("ct", "BTCV", "ABD_001", 0, 7) == "ct_00--BTCV--ABD_001--z_0007"
    with pytest.raises(InputError, match="not an SA-Med2D-20M image name"):
        samed2d.parse_image_stem("ABD_001_100")
    with pytest.raises(InputError):
        samed2d.format_image_stem("ct", "a--b", "c", "z", 1)
