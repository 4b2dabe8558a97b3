"""IMed-361M layout: the reader against the raw btcv-demo files, and the byte-deterministic writer."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import sparse

from imis.data.formats import imed
from imis.data.sample import Sample
from imis.errors import InputError


def _raw_label(path: Path) -> np.ndarray:
    """Dense (C, H, W) bool straight from the CSR file and the shape in its name (independent of imed)."""
    c, h, w, _ = (int(x) for x in path.name.split(".(")[1].split(")")[0].split(","))
    mat = sparse.load_npz(path)
    assert mat.shape == (c, h * w) and mat.dtype == np.int32
    return mat.toarray().reshape(c, h, w) != 0


def _restore_npy(btcv_dir: Path, rel_npy: str, dest_root: Path) -> Path:
    """What btcv-demo's README says: the released .npy from the re-packed .npz."""
    src = (btcv_dir / rel_npy).with_suffix(".npz")
    dest = dest_root / rel_npy
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.save(dest, np.load(src)["imask"])
    return dest


def test_btcv_reader_equals_raw_files(btcv_dir, tmp_path):
    meta = json.loads((btcv_dir / "dataset.json").read_text())
    names = {int(k): v for k, v in meta["labels"].items() if k != "0"}
    items = [(e, "train") for e in meta["training"][::9]] + [(e, "test") for e in meta["test"][::3]]
    # A released-format copy: images/labels read in place (absolute paths), imasks restored as .npy.
    entries = {"training": [], "test": []}
    for e, split in items:
        _restore_npy(btcv_dir, e["imask"], tmp_path)
        entries["training" if split == "train" else "test"].append(
            {"image": str(btcv_dir / e["image"]), "label": str(btcv_dir / e["label"]), "imask": e["imask"]}
        )
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, **entries}))
    ds = imed.read_dataset(tmp_path)
    assert ds.name == "BTCV" and ds.modality == "ct" and ds.labels == names
    samples = list(imed.iter_samples(ds, keep_empty=True))
    assert len(samples) == len(items)
    for s, (e, split) in zip(samples, items, strict=True):
        assert isinstance(s, Sample)
        assert (
            s.id == Path(e["image"]).stem and s.split == split and s.dataset == "BTCV" and s.modality == "ct"
        )
        assert np.array_equal(s.image, np.asarray(Image.open(btcv_dir / e["image"])))
        raw = _raw_label(btcv_dir / e["label"])
        assert list(s.masks) == [names[c + 1] for c in range(raw.shape[0])]
        for c, name in enumerate(s.masks):
            assert s.masks[name].dtype == bool and np.array_equal(s.masks[name], raw[c])
        released = np.load(tmp_path / e["imask"])  # the released form: int64 (H, W, 1)
        assert released.dtype == np.int64 and released.shape == (512, 512, 1)
        assert s.imask.dtype == np.int64 and np.array_equal(s.imask, released[..., 0])
        ids = np.unique(released)
        assert np.array_equal(s.imask_ids(), ids[ids != 0])
        case, index = Path(e["image"]).stem.rsplit("_", 1)
        assert s.provenance["case"] == case and s.provenance["slice"] == int(index)
        assert s.provenance["imask"] == e["imask"]
    # default: empty channels dropped; the .npz re-pack is read when the .npy is absent
    direct = next(imed.iter_samples(btcv_dir, "test"))
    raw = _raw_label(btcv_dir / meta["test"][0]["label"])
    assert list(direct.masks) == [names[c + 1] for c in range(raw.shape[0]) if raw[c].any()]
    assert np.array_equal(
        direct.imask, np.load((btcv_dir / meta["test"][0]["imask"]).with_suffix(".npz"))["imask"][..., 0]
    )
    assert sum(1 for _ in imed.iter_samples(ds, "test", with_imask=False)) == len(entries["test"])


def test_label_areas_match_dense(btcv_dir):
    path = next((btcv_dir / "label").glob("*.npz"))
    shape, areas = imed.label_areas(path)
    dense = _raw_label(path)
    assert shape == (*dense.shape, 1) and areas.tolist() == dense.reshape(dense.shape[0], -1).sum(1).tolist()


def _synthetic(h=37, w=53, c=4, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    masks = rng.random((c, h, w)) < 0.2
    masks[2] = False  # an empty channel, as the released files have
    imask = rng.integers(0, 9, (h, w))
    return image, masks, imask


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_sample_round_trip_and_byte_determinism(tmp_path):
    image, masks, imask = _synthetic()
    entry = imed.write_sample(tmp_path / "a", "case_7", image, masks, imask)
    assert entry == {
        "image": "image/case_7.png",
        "label": "label/x___case_7.(4, 37, 53, 1).npz",
        "imask": "imask/x___case_7.npy",
    }
    imed.write_sample(tmp_path / "b", "case_7", image, masks, imask)
    first = _tree(tmp_path / "a")
    assert set(first) == set(entry.values())  # no temporary files left behind
    assert first == _tree(tmp_path / "b")
    imed.write_sample(tmp_path / "a", "case_7", image, masks, imask)  # a rerun over finished files
    assert _tree(tmp_path / "a") == first
    root = tmp_path / "a"
    with Image.open(root / entry["image"]) as im:
        assert im.mode == "RGB" and im.size == (53, 37) and not im.info.get("dpi")
        rgb = np.asarray(im)
    assert all(np.array_equal(rgb[..., k], image) for k in range(3))
    mat = sparse.load_npz(root / entry["label"])
    assert mat.format == "csr" and mat.shape == (4, 37 * 53) and mat.dtype == np.int32
    assert np.all(mat.data == 1) and mat.indices.dtype == np.int32 and mat.indptr.dtype == np.int32
    with zipfile.ZipFile(root / entry["label"]) as zf:
        assert [i.filename for i in zf.infolist()] == [
            "indices.npy",
            "indptr.npy",
            "format.npy",
            "shape.npy",
            "data.npy",
        ]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert np.array_equal(imed.read_label(root / entry["label"]), masks)
    saved = np.load(root / entry["imask"])
    assert saved.dtype == np.int64 and saved.shape == (37, 53, 1)
    assert np.array_equal(imed.read_imask(root / entry["imask"]), imask)
    # zero channels and no imask
    e2 = imed.write_sample(tmp_path / "c", "empty", image, np.zeros((0, 37, 53), bool))
    assert "imask" not in e2 and imed.read_label(tmp_path / "c" / e2["label"]).shape == (0, 37, 53)


def test_rewritten_btcv_labels_are_byte_identical_to_released(btcv_dir, tmp_path):
    for path in sorted((btcv_dir / "label").glob("*.npz"))[:6]:
        stem = path.name[len("x___") :].split(".(")[0]
        labels = imed.read_label(path)
        entry = imed.write_sample(tmp_path, stem, np.zeros(labels.shape[1:], np.uint8), labels)
        ours = (tmp_path / entry["label"]).read_bytes()
        assert (tmp_path / entry["label"]).name == path.name
        if ours != path.read_bytes():
            with zipfile.ZipFile(path) as a, zipfile.ZipFile(tmp_path / entry["label"]) as b:
                assert [(i.filename, a.read(i)) for i in a.infolist()] == [
                    (i.filename, b.read(i)) for i in b.infolist()
                ]
            pytest.skip("this zlib build deflates differently from the one the release was made with")


def test_write_dataset_json(tmp_path, btcv_dir):
    entries = [imed.write_sample(tmp_path, f"c{i}_{i * 10}", *_synthetic(seed=i)) for i in range(3)]
    # the same call twice: a rewrite with the same content must leave the file byte-identical
    args = (tmp_path, "Toy", "ct_Toy", {0: "ct"}, {1: "a", 2: "b", 3: "c", 4: "d"}, entries[:2], entries[2:])
    path = imed.write_dataset_json(*args, extra={"imis": {"v": 1}})
    text = path.read_text()
    released = json.loads((btcv_dir / "dataset.json").read_text())
    data = json.loads(text)
    assert list(data)[: len(released)] == list(released) and data["imis"] == {"v": 1}
    assert data["labels"] == {"0": "background", "1": "a", "2": "b", "3": "c", "4": "d"}
    assert data["numTraining"] == 2 and data["numTest"] == 1
    imed.write_dataset_json(*args, extra={"imis": {"v": 1}})
    assert path.read_text() == text
    ds = imed.read_dataset(tmp_path)
    assert (
        ds.name == "Toy"
        and ds.description == "ct_Toy"
        and [e.split for e in ds.entries] == ["train", "train", "test"]
    )
    s = list(imed.iter_samples(ds, keep_empty=True))
    assert (
        list(s[0].masks) == ["a", "b", "c", "d"]
        and s[2].provenance["case"] == "c2"
        and s[2].provenance["slice"] == 20
    )
    with pytest.raises(InputError, match="overwrite"):
        imed.write_dataset_json(tmp_path, "T", "", {0: "ct"}, {}, [], [], extra={"labels": {}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stem": "a/b"}, "invalid sample stem"),
        ({"image": np.zeros((37, 53), np.float32)}, "uint8"),
        ({"masks": np.zeros((2, 30, 53), bool)}, "do not match"),
        ({"masks": np.full((2, 37, 53), 2, np.uint8)}, "bool or 0/1"),
        ({"imask": np.zeros((37, 53), np.float64)}, "integer ids"),
    ],
)
def test_write_sample_rejects_bad_input(tmp_path, kwargs, match):
    image, masks, imask = _synthetic()
    args = {"stem": "s", "image": image, "masks": masks, "imask": imask, **kwargs}
    with pytest.raises(InputError, match=match):
        imed.write_sample(tmp_path, **args)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_read_imask_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        imed.read_imask(tmp_path / "none.npy")
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 1), np.float32))
    with pytest.raises(InputError, match="integer ids"):
        imed.read_imask(tmp_path / "f.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable imask"):
        imed.read_imask(tmp_path / "bad.npy")
