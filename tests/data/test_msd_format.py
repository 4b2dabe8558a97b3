"""MSD / nnU-Net raw folders: Colin27 + AAL written as nnU-Net raw (and MSD) folders read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imis.data.formats import msd
from imis.errors import InputError
from imis.io import Geometry, ImageData, read_image

TEMPLATES = Path("/usr/share/mricron/templates")


def _crop(img: ImageData, z0: int, z1: int) -> ImageData:
    """z-slices [z0, z1) of a volume, placed where they were (origin moved to slice z0)."""
    g = img.geometry
    return ImageData(
        array=np.ascontiguousarray(img.array[z0:z1]),
        geometry=Geometry(g.spacing, g.index_to_physical([0, 0, z0]), g.direction),
        kind="volume",
    )


@pytest.fixture(scope="module")
def colin_aal():
    needed = [TEMPLATES / n for n in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"Colin27/AAL absent ({', '.join(missing)}); install the Debian package mricron-data")
    ch2, aal = read_image(needed[0]), read_image(needed[1])
    names = {}
    for line in needed[2].read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names[int(parts[0])] = parts[1]
    cases = [
        (f"colin_{i:03d}", _crop(ch2, z, z + 3), _crop(aal, z, z + 3).array) for i, z in enumerate((70, 95))
    ]
    return cases, names, _crop(ch2, 40, 42)


@pytest.mark.parametrize("style", ["nnunet", "msd"])
def test_colin27_aal_round_trip(colin_aal, tmp_path, style):
    cases, names, test_image = colin_aal
    path = msd.write_nnunet_raw(
        tmp_path, cases, names, "MRI", name="Colin27AAL", style=style, test_cases=[("colin_900", test_image)]
    )
    meta = json.loads(path.read_text())
    suffix = "_0000" if style == "nnunet" else ""
    assert (tmp_path / "imagesTr" / f"colin_000{suffix}.nii.gz").is_file()
    assert (tmp_path / "labelsTr" / "colin_000.nii.gz").is_file()
    assert (tmp_path / "imagesTs" / f"colin_900{suffix}.nii.gz").is_file()
    if style == "nnunet":
        assert (
            meta["labels"]["background"] == 0
            and meta["labels"]["Thalamus_L"] == 77
            and meta["channel_names"] == {"0": "MRI"}
        )
    else:
        assert (
            meta["labels"]["0"] == "background"
            and meta["labels"]["77"] == "Thalamus_L"
            and meta["modality"] == {"0": "MRI"}
        )
    ds = msd.read_dataset(tmp_path)
    assert ds.name == "Colin27AAL" and ds.style == style and ds.labels == names and ds.modality == "mri"
    assert [(e.id, e.split) for e in ds.entries] == [
        ("colin_000", "train"),
        ("colin_001", "train"),
        ("colin_900", "test"),
    ]
    got = list(msd.iter_cases(ds, "train"))
    for case, (cid, image, label) in zip(got, cases, strict=True):
        assert case.id == cid and case.split == "train" and case.modality == "mri"
        assert case.image.array.dtype == image.array.dtype and np.array_equal(case.image.array, image.array)
        assert case.image.geometry.allclose(image.geometry, atol=1e-6)
        assert np.array_equal(case.label.array, label) and case.label.geometry.allclose(
            image.geometry, atol=1e-6
        )
        present = {int(v) for v in np.unique(label) if v}
        assert case.label_names() == {v: names[v] for v in sorted(present)}
    (test_case,) = msd.iter_cases(ds, "test")
    assert test_case.label is None and np.array_equal(test_case.image.array, test_image.array)


def test_nnunet_v1_listing_and_channels(colin_aal, tmp_path):
    cases, names, _ = colin_aal
    msd.write_nnunet_raw(tmp_path, cases[:1], names, {0: "T1", 1: "T1x2"})
    # v1 dataset.json: MSD-form labels, 'training' lists "<case>.nii.gz" while files carry _0000/_0001
    img = cases[0][1]
    second = ImageData(array=(img.array // 2).astype(np.uint8), geometry=img.geometry, kind="volume")
    msd._write_volume(tmp_path / "imagesTr" / "colin_000_0001.nii.gz", second)
    meta = {
        "name": "v1",
        "modality": {"0": "T1", "1": "T1x2"},
        "labels": {str(k): v for k, v in {0: "background", **names}.items()},
        "training": [{"image": "./imagesTr/colin_000.nii.gz", "label": "./labelsTr/colin_000.nii.gz"}],
        "test": [],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = msd.read_dataset(tmp_path)
    (entry,) = ds.entries
    assert [p.name for p in entry.images] == ["colin_000_0000.nii.gz", "colin_000_0001.nii.gz"]
    c1 = msd.read_case(ds, entry, channel=1)
    assert c1.modality == "t1x2" and np.array_equal(c1.image.array, second.array)
    with pytest.raises(InputError, match="channel 2 does not exist"):
        msd.read_case(ds, entry, channel=2)


def test_msd_4d_multichannel_file(colin_aal, tmp_path):
    cases, names, _ = colin_aal
    _, img, label = cases[0]
    msd.write_nnunet_raw(tmp_path, [cases[0]], names, {0: "FLAIR", 1: "T1"}, style="msd")
    chans = []
    for k in range(2):
        im = sitk.GetImageFromArray((img.array // (k + 1)).astype(np.uint8))
        img.geometry.apply_to(im)
        chans.append(im)
    sitk.WriteImage(sitk.JoinSeries(chans), str(tmp_path / "imagesTr" / "colin_000.nii.gz"))
    ds = msd.read_dataset(tmp_path)
    c1 = msd.read_case(ds, ds.entries[0], channel=1)
    assert c1.image.array.shape == img.array.shape and np.array_equal(c1.image.array, img.array // 2)
    assert c1.image.geometry.allclose(img.geometry, atol=1e-6) and np.array_equal(c1.label.array, label)


def test_bad_cases_raise_per_case(colin_aal, tmp_path):
    cases, names, _ = colin_aal
    msd.write_nnunet_raw(tmp_path, cases, names, "MRI")
    ds = msd.read_dataset(tmp_path)
    geo = cases[0][1].geometry

    def put_label(array, geometry=geo):
        im = sitk.GetImageFromArray(array)
        geometry.apply_to(im)
        sitk.WriteImage(im, str(tmp_path / "labelsTr" / "colin_000.nii.gz"))

    put_label(cases[0][2].astype(np.float32))  # whole numbers stored as float: accepted
    case = msd.read_case(ds, ds.entries[0])
    assert case.label.array.dtype == np.uint8 and np.array_equal(case.label.array, cases[0][2])
    put_label(cases[0][2].astype(np.float32) + 0.5)
    with pytest.raises(InputError, match="case colin_000: .*non-integer"):
        msd.read_case(ds, ds.entries[0])
    put_label(cases[0][2][:2])
    with pytest.raises(InputError, match="case colin_000: label map shape"):
        msd.read_case(ds, ds.entries[0])
    put_label(cases[0][2], Geometry(geo.spacing, np.add(geo.origin, 5.0), geo.direction))
    with pytest.raises(InputError, match="case colin_000: label map geometry"):
        msd.read_case(ds, ds.entries[0])
    (tmp_path / "imagesTr" / "colin_001_0000.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="case colin_001"):
        msd.read_case(ds, ds.entries[1])


def test_label_forms(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "a_0000.nii.gz").write_bytes(b"")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "tumor": [2], "whole": [1, 2]},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = msd.read_dataset(tmp_path)
    assert ds.labels == {1: "liver", 2: "tumor"} and ds.regions == {"whole": (1, 2)} and ds.modality == "ct"
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "a": 1, "b": 1}}))
    with pytest.raises(InputError, match="share the value 1"):
        msd.read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        msd.read_dataset(tmp_path)
