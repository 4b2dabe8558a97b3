"""imis-lite's template datasets (imis.data.brain_templates) on the real templates, with a large step.

Needs Debian mricron-data (/usr/share/mricron/templates) and PyPI nilearn (MNI152 2009a inside it);
each test is skipped with the reason when they are absent.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from imis.errors import InputError

STEP = 30  # about 15 slices per dataset: the whole build takes a few seconds


@pytest.fixture(scope="module")
def files():
    from imis.data.brain_templates import TEMPLATES_DIR, TemplateFiles

    if not TEMPLATES_DIR.is_dir():
        pytest.skip(
            f"{TEMPLATES_DIR} absent: install the Debian package mricron-data (Colin27, AAL, Brodmann)"
        )
    try:
        return TemplateFiles.locate()
    except InputError as exc:
        pytest.skip(f"template files absent: {exc}")


@pytest.fixture(scope="module")
def built(files, tmp_path_factory):
    """(run folder, summaries) of one build with step STEP for both templates."""
    from imis.data.brain_templates import build_template_datasets

    out = tmp_path_factory.mktemp("templates") / "run"
    rows = build_template_datasets(out, colin_step=STEP, mni_step=STEP, files=files, progress=False)
    return out, rows


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def _keys(names: dict[int, str]) -> set[str]:
    from imis.data.vocabulary import Vocabulary

    vocab = Vocabulary.builtin()
    return {vocab.resolve(n).key for n in names.values()}


# -- the held-out list -------------------------------------------------------------------------------------
def test_heldout_list_is_a_fifth_of_aal_in_bilateral_pairs(files):
    from imis.data.brain_templates import HELDOUT_AAL_STRUCTURES, heldout_aal_labels, read_aal_names
    from imis.data.vocabulary import Vocabulary

    names = read_aal_names(files.aal_names)
    assert len(names) == 116
    held = heldout_aal_labels(names)
    assert len(held) == 2 * len(HELDOUT_AAL_STRUCTURES) == 24
    assert 0.18 <= len(held) / len(names) <= 0.22
    assert {n.rsplit("_", 1)[0] for n in held.values()} == set(HELDOUT_AAL_STRUCTURES)
    assert all(f"{s}_L" in held.values() and f"{s}_R" in held.values() for s in HELDOUT_AAL_STRUCTURES)
    vocab = Vocabulary.builtin()
    assert all(vocab.resolve(n).known for n in names.values())
    with pytest.raises(InputError, match="'Nucleus_Accumbens'.*no 'Nucleus_Accumbens_L'"):
        heldout_aal_labels(names, ["Thalamus", "Nucleus_Accumbens"])


# -- the datasets ------------------------------------------------------------------------------------------
def test_heldout_structures_only_in_the_heldout_test_dataset(built, files):
    from imis.data.brain_templates import heldout_aal_labels, read_aal_names
    from imis.data.formats import imed
    from imis.io import read_image

    out, rows = built
    names = read_aal_names(files.aal_names)
    held = heldout_aal_labels(names)
    held_keys = _keys(held)
    # the derived label volumes
    aal = read_image(files.aal).array
    train_vol = read_image(out / "sources" / "aal_train.nii.gz").array
    held_vol = read_image(out / "sources" / "aal_heldout.nii.gz").array
    assert not np.isin(train_vol, list(held)).any()
    assert set(np.unique(held_vol)) == {0, *held}
    np.testing.assert_array_equal(np.maximum(train_vol, held_vol), aal)  # a partition of AAL
    # the datasets: labels, masks present, splits
    for name in ("colin27-aal", "colin27-brodmann", "mni152-tissue"):
        ds = imed.read_dataset(out / name)
        assert not set(ds.labels.values()) & held_keys, name
        assert {e.split for e in ds.entries} == {"train"}, name
        seen = {ds.labels[m["label"]] for r in _manifest(out / name) for m in r["masks"]}
        assert not seen & held_keys, name
    ds = imed.read_dataset(out / "colin27-aal")
    assert set(ds.labels.values()) == _keys(names) - held_keys and len(ds.labels) == 92
    heldout = imed.read_dataset(out / "colin27-aal-heldout")
    assert set(heldout.labels.values()) == held_keys
    assert heldout.entries and {e.split for e in heldout.entries} == {"test"}
    seen = {heldout.labels[m["label"]] for r in _manifest(out / "colin27-aal-heldout") for m in r["masks"]}
    assert seen <= held_keys and len(seen) >= 12
    # a held-out mask is exactly the AAL structure on its slice
    sample = next(imed.iter_samples(heldout, "test"))
    rec = next(r for r in _manifest(out / "colin27-aal-heldout") if r["id"] == sample.id)
    axis = {"z": 0, "y": 1, "x": 2}[rec["axis"]]
    truth = np.take(aal, rec["index"], axis=axis)
    value_of = {heldout.labels[m["label"]]: m["value"] for m in rec["masks"]}
    for key, mask in sample.masks.items():
        np.testing.assert_array_equal(mask, truth == value_of[key])
    by_name = {r.dataset: r for r in rows}
    assert by_name["colin27-aal-heldout"].split == "test" and by_name["colin27-aal-heldout"].role == "eval"
    assert len(by_name["colin27-aal-heldout"].targets) == len(seen)


def test_colin27_datasets_share_slice_indices_and_images(built, files):
    from imis.data.prepare.slicing import slice_indices
    from imis.io import read_image

    out, _ = built
    shape = read_image(files.colin_t1).array.shape
    grid = {(a, i) for a, n in zip("zyx", shape, strict=True) for i in slice_indices(n, STEP)}
    kept = {}
    digests: dict[tuple[str, int], set[str]] = defaultdict(set)
    for name in ("colin27-aal", "colin27-aal-heldout", "colin27-brodmann"):
        recs = _manifest(out / name)
        kept[name] = {(r["axis"], r["index"]) for r in recs}
        assert kept[name] <= grid, name
        assert {r["id"] for r in recs} == {f"colin27_{a}_{i:04d}" for a, i in kept[name]}
        for r in recs:
            digests[(r["axis"], r["index"])].add(r["digest"])
    # Brodmann (no cerebellum) and the held-out structures cover a subset of AAL's slices
    assert kept["colin27-brodmann"] <= kept["colin27-aal"]
    assert len(kept["colin27-brodmann"]) >= 0.9 * len(kept["colin27-aal"])
    assert kept["colin27-aal-heldout"] <= kept["colin27-aal"]
    assert all(len(d) == 1 for d in digests.values())  # one image per slice index, shared by all three
    for name in ("colin27-aal-heldout", "colin27-brodmann"):  # byte-identical PNGs: one embedding each
        for png in (out / name / "image").iterdir():
            assert png.read_bytes() == (out / "colin27-aal" / "image" / png.name).read_bytes(), png
    index = json.loads((out / "datasets.json").read_text())
    assert index["slice_step"] == {"colin27": STEP, "mni152": STEP}
    assert index["distinct_images"]["colin27"] == len(kept["colin27-aal"])


def test_mni152_masks_are_not_empty_and_brain_contains_grey_and_white_matter(built):
    from imis.data.formats import imed

    out, _ = built
    root = out / "mni152-tissue"
    ds = imed.read_dataset(root)
    assert sorted(ds.labels.values()) == ["brain", "gray_matter", "white_matter"]
    samples = {
        (s.provenance["case"], s.provenance["axis"], s.provenance["slice"]): s for s in imed.iter_samples(ds)
    }
    brain_slices = {(a, i) for c, a, i in samples if c == "mni152_brain"}
    tissue_slices = {(a, i) for c, a, i in samples if c == "mni152_tissue"}
    assert tissue_slices and tissue_slices <= brain_slices
    for (case, _, _), s in samples.items():
        assert s.masks and all(m.sum() * 1000 >= m.size for m in s.masks.values())
        assert set(s.masks) <= ({"brain"} if case == "mni152_brain" else {"gray_matter", "white_matter"})
    for a, i in tissue_slices:
        tissue, brain = samples[("mni152_tissue", a, i)], samples[("mni152_brain", a, i)]
        assert tissue.provenance["image"] != brain.provenance["image"]
        assert (root / tissue.provenance["image"]).read_bytes() == (
            root / brain.provenance["image"]
        ).read_bytes()
        for key in ("gray_matter", "white_matter"):
            if key in tissue.masks:
                assert not (tissue.masks[key] & ~brain.masks["brain"]).any(), (key, a, i)
        if "gray_matter" in tissue.masks and "white_matter" in tissue.masks:
            assert not (tissue.masks["gray_matter"] & tissue.masks["white_matter"]).any()
    # the symmetric template's mirror sagittal slices are not kept twice
    recs = _manifest(root)
    for case in ("mni152_tissue", "mni152_brain"):
        d = [r["digest"] for r in recs if r["case"] == case]
        assert len(d) == len(set(d)), case


# -- the command -------------------------------------------------------------------------------------------
def test_command_resumes_and_refuses_other_steps_and_foreign_folders(built, tmp_path, capsys):
    from imis.cli import main

    out, rows = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "sources" in p.parts}
    argv = ["prepare-templates", "--out", str(out), "--slice-step", str(STEP), "--no-progress"]
    assert main([*argv, "--btcv", str(tmp_path / "nowhere")]) == 2
    assert "not a btcv-demo folder" in capsys.readouterr().err
    assert main(argv) == 0
    text = capsys.readouterr().out
    for r in rows:
        line = next(ln for ln in text.splitlines() if ln.startswith(r.dataset + " "))
        assert line.split()[1:5] == [r.split, str(r.images), str(r.masks), str(len(r.targets))]
        assert line.split()[-1] == "resumed"
    assert "distinct images to encode" in text
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "sources" in p.parts}
    assert after == before  # the derived volumes were not rewritten
    assert main(["prepare-templates", "--out", str(out), "--slice-step", "7", "--no-progress"]) == 2
    assert "was built with slice steps colin27 30, mni152 30" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["prepare-templates", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-templates", "--out", str(out), "--slice-step", "0"])
    assert "expected a whole number >= 1" in capsys.readouterr().err


def test_bad_steps_and_missing_files(files, tmp_path):
    from imis.data.brain_templates import TEMPLATES_DIR, TemplateFiles, write_template_sources

    with pytest.raises(InputError, match=r"ch2\.nii\.gz: not found; install the Debian package mricron-data"):
        TemplateFiles.locate(tmp_path, nilearn_data=tmp_path)
    with pytest.raises(InputError, match="not found; the MNI152 2009a templates ship inside PyPI nilearn"):
        TemplateFiles.locate(TEMPLATES_DIR, nilearn_data=tmp_path)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match="colin_step: the slice step must be a whole number >= 1"):
            write_template_sources(tmp_path, files, colin_step=bad)
    assert not (tmp_path / "sources").exists()
