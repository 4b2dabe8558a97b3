"""Fuzzing the dataset readers: IMed-361M label / imask files and dataset.json, SA-Med2D-20M's JSON index,
nnU-Net's dataset.json. Seeds are written from real btcv-demo and Colin27 data with our own writers;
a JSON case is a byte mutation or one value of the parsed JSON replaced by another JSON value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import FUZZ_SETTINGS, Quiet, Recipe, check_reader, mutated, operation
from hypothesis import given
from hypothesis import strategies as st

from imis.data.formats import imed, msd, samed2d

pytestmark = pytest.mark.fuzz  # IMIS_FUZZ_EXAMPLES cases per format; scripts/fuzz_long.sh

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@operation("json")
def _json_edit(data: bytes, path: list, action: str, key, value) -> bytes:
    """Walk ``path`` from the root; then replace / delete the entry ``key`` there, or add one."""
    obj = json.loads(data)
    node = obj
    for k in path:
        node = node[k]
    if action == "add":
        if isinstance(node, dict):
            node[key] = value
        elif isinstance(node, list):
            node.append(value)
    elif action == "set":
        node[key] = value
    else:
        del node[key]
    return json.dumps(obj).encode()


@st.composite
def json_mutation(draw, holder: Quiet) -> Recipe:
    """One value of the JSON (found by walking down from the root) replaced, deleted, or one added."""
    node, path = holder.value, []
    for _ in range(draw(st.integers(0, 4))):
        keys = (
            list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        )
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], (dict, list)) or draw(st.booleans()):
            action = draw(st.sampled_from(["set", "delete"]))
            return Recipe([("json", path, action, key, draw(JSON_VALUES))])
        node = node[key]
        path.append(key)
    return Recipe([("json", path, "add", draw(st.text(max_size=8)), draw(JSON_VALUES))])


def _fuzz_json(fmt: str, path: Path, read) -> None:
    raw = path.read_bytes()
    holder = Quiet(json.loads(raw))

    @FUZZ_SETTINGS
    @given(recipe=st.one_of(mutated(len(raw), 4096), json_mutation(holder), json_mutation(holder)))
    def run(recipe):
        path.write_bytes(recipe(raw))
        try:
            check_reader(fmt, path, read, names=(str(path.parent),))
        finally:
            path.write_bytes(raw)

    run()


@pytest.fixture(scope="module")
def imed_dataset(btcv_dir, tmp_path_factory) -> Path:
    """Two real btcv-demo slices (cropped to 48 x 40) written in the released layout."""
    root = tmp_path_factory.mktemp("imed")
    ds = imed.read_dataset(btcv_dir)
    entries = []
    for entry in ds.split("train")[:2]:
        sample = imed.read_sample(ds, entry, keep_empty=True)
        masks = np.stack([m[200:248, 100:140] for m in sample.masks.values()])
        imask = sample.imask[200:248, 100:140] if sample.imask is not None else None
        entries.append(imed.write_sample(root, entry.stem, sample.image[200:248, 100:140], masks, imask))
    imed.write_dataset_json(root, "btcv-crop", "fuzz seed", {0: "ct"}, ds.labels, entries, [])
    return root


def _read_all_imed(path: Path):
    return [len(s.masks) for s in imed.iter_samples(path.parent)]


def test_imed_dataset_json_never_breaks(imed_dataset):
    _fuzz_json("imed-dataset.json", imed_dataset / "dataset.json", _read_all_imed)


@pytest.mark.parametrize("which", ["label", "imask"])
def test_imed_label_and_imask_never_break(which, imed_dataset, tmp_path):
    entry = imed.read_dataset(imed_dataset).entries[0]
    seed = entry.label if which == "label" else entry.imask
    path = tmp_path / seed.name
    raw = seed.read_bytes()
    read = imed.read_label if which == "label" else imed.read_imask

    @FUZZ_SETTINGS
    @given(recipe=mutated(len(raw), 1024))
    def run(recipe):
        path.write_bytes(recipe(raw))
        check_reader(f"imed-{which}.npz", path, read)

    run()


@pytest.fixture(scope="module")
def samed2d_dataset(imed_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samed2d")
    samples = list(imed.iter_samples(imed_dataset))
    for s in samples:
        s.provenance.update({"case": s.id.rsplit("_", 1)[0], "axis": "z"})
    samed2d.write_dataset(root, samples)
    return root


def test_samed2d_index_never_breaks(samed2d_dataset):
    def read(path: Path):
        ds = samed2d.read_dataset(path.parent)
        return [len(s.masks) for s in samed2d.iter_samples(ds)]

    for name in (samed2d.INDEX_NAME, samed2d.CLASS_MAP_NAME):
        _fuzz_json(f"samed2d-{name}", samed2d_dataset / name, read)


@pytest.fixture(scope="module")
def nnunet_dataset(tmp_path_factory) -> Path:
    """A real Colin27 block with its AAL labels written as an nnU-Net raw folder."""
    from imis.io import read_image

    templates = Path("/usr/share/mricron/templates")
    if not (templates / "aal.nii.gz").is_file():
        pytest.skip("Colin27 / AAL absent (Debian mricron-data)")
    t1 = read_image(templates / "ch2.nii.gz")
    aal = read_image(templates / "aal.nii.gz")
    block = (slice(80, 86), slice(100, 130), slice(70, 100))
    image = type(t1)(np.ascontiguousarray(t1.array[block]), t1.geometry, kind="volume")
    labels = np.ascontiguousarray(aal.array[block]).astype(np.int16)
    root = tmp_path_factory.mktemp("nnunet")
    names = {int(v): f"aal_{int(v)}" for v in np.unique(labels) if v}
    msd.write_nnunet_raw(root, [("colin", image, labels)], names, "MRI", name="ColinBlock")
    return root


def test_nnunet_dataset_json_never_breaks(nnunet_dataset, tmp_path):
    root = tmp_path / "nnunet"
    shutil.copytree(nnunet_dataset, root)

    def read(path: Path):
        ds = msd.read_dataset(path.parent)
        return [c.image.array.shape for c in msd.iter_cases(ds)]

    _fuzz_json("nnunet-dataset.json", root / "dataset.json", read)
