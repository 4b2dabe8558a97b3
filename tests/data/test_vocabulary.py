"""The target vocabulary: synonyms, laterality, the six groups, the released keys, AAL, YAML extension."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imis.data.vocabulary import (
    BACKGROUND_GROUP,
    GROUPS,
    UNKNOWN_GROUP,
    UnknownTargetError,
    Vocabulary,
    normalize_name,
)
from imis.errors import InputError

AAL_NAMES = Path("/usr/share/mricron/templates/aal.nii.txt")
# Where our canonical name deliberately differs from the released merged category (release slips:
# side words inside category names, a 'middleear' spelling, and brain_tumor mapped to a different lesion).
DEVIATIONS = {
    "brain_tumor": "brain tumor",
    "right_lens": "crystalline lens",
    "middleear_left": "middle ear",
    "middleear_right": "middle ear",
    "tympanic_cavity_left": "tympanic cavity",
    "tympanic_cavity_right": "tympanic cavity",
    "vestibular_semicircular_canal_left": "vestibular semicircular canal",
    "vestibular_semicircular_canal_right": "vestibular semicircular canal",
}


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.builtin()


def test_synonyms(vocab):
    for raw in ("pulmonary nodule", "Pulmonary_Nodules", "lung nodule", "LUNG-NODULE"):
        t = vocab.resolve(raw)
        assert (t.name, t.group, t.laterality, t.known) == ("lung nodule", "Lesions", None, True)
    assert vocab.resolve("gall_bladder").name == vocab.resolve("Gallbladder").name == "gallbladder"
    assert vocab.resolve("postcava").name == "inferior vena cava"
    assert vocab.resolve("liver tumour").name == "liver tumor"
    assert vocab.resolve("urinary_bladder").group == "Pelvis"


@pytest.mark.parametrize(
    "raw", ["kidney_left", "Left kidney", "Kidney_L", "LeftKidney", "kidney left", "lt kidney"]
)
def test_left_right_merging(vocab, raw):
    t = vocab.resolve(raw)
    assert (t.name, t.group, t.laterality, t.display, t.key, t.code) == (
        "kidney",
        "Abdomen",
        "left",
        "Left kidney",
        "kidney_left",
        "A11",
    )


def test_laterality_details_and_patterns(vocab):
    t = vocab.resolve("Right kidney")
    assert (t.name, t.laterality) == ("kidney", "right")
    t = vocab.resolve("rib_right_11")
    assert (t.name, t.laterality, t.detail, t.display, t.group) == (
        "rib",
        "right",
        "11",
        "Right rib 11",
        "Skeleton",
    )
    t = vocab.resolve("vertebrae_T13")
    assert (t.name, t.detail, t.display, t.laterality) == (
        "thoracic spine",
        "T13",
        "Thoracic spine T13",
        None,
    )
    assert (
        vocab.resolve("vertebrae_C4").name == "cervical spine"
        and vocab.resolve("vertebrae_L6").name == "lumbar spine"
    )
    t = vocab.resolve("heart_left_ventricle_blood_cavity")
    assert (t.name, t.laterality, t.group) == ("ventricle", "left", "Thorax")
    assert vocab.resolve("lung_upper_lobe_right").name == "upper lobe"
    assert vocab.resolve("left and right lung").laterality is None  # both sides: no laterality


def test_six_groups_cover_table3(vocab):
    assert GROUPS == ("Head and Neck", "Thorax", "Skeleton", "Abdomen", "Pelvis", "Lesions")
    assert vocab.groups[:6] == GROUPS
    codes = {t.code for t in vocab.targets.values() if t.code}
    # Table 3 of the paper: A01-A21, H01-H27, S01-S10, T01-T14, P01-P10, L01-L24
    expected = {
        f"{p}{i:02d}"
        for p, n in (("A", 21), ("H", 27), ("S", 10), ("T", 14), ("P", 10), ("L", 24))
        for i in range(1, n + 1)
    }
    assert codes == expected
    letter = {
        "A": "Abdomen",
        "H": "Head and Neck",
        "S": "Skeleton",
        "T": "Thorax",
        "P": "Pelvis",
        "L": "Lesions",
    }
    for t in vocab.targets.values():
        assert t.group in GROUPS
        if t.code:
            assert t.group == letter[t.code[0]], t
    for name in ("spleen", "brain", "clavicle", "esophagus", "bladder", "glioma"):
        assert vocab.resolve(name).group in GROUPS


def test_every_released_key_resolves(vocab, shared_dir):
    data = json.loads((shared_dir / "data" / "imis-categories.json").read_text())
    keys = data["categories_map"]
    assert len(keys) > 200
    for key, (_display, category) in keys.items():
        t = vocab.resolve(key, unknown="error")
        if key == "background":
            assert t.group == BACKGROUND_GROUP and t.is_background
            continue
        assert t.known and t.group in GROUPS, (key, t)
        assert t.name == DEVIATIONS.get(key, normalize_name(category)), (key, t.name, category)
        if re.search(r"(^|_)(left|right)(_|$)", key):
            assert t.laterality == re.search(r"(left|right)", key).group(1), key
    assert set(DEVIATIONS) <= set(keys)


def test_aal_names(vocab):
    if not AAL_NAMES.is_file():
        pytest.skip(f"{AAL_NAMES} absent (install the Debian package mricron-data)")
    names = [ln.split()[1] for ln in AAL_NAMES.read_text().splitlines() if len(ln.split()) >= 2]
    assert len(names) == 116
    canonical = set()
    for raw in names:
        t = vocab.resolve(raw, unknown="error")
        assert t.group == "Head and Neck", raw
        side = {"L": "left", "R": "right"}.get(raw.rsplit("_", 1)[-1])
        assert t.laterality == side, raw
        canonical.add(t.name)
    assert len(canonical) == 54 + 8  # 54 paired regions (L/R merged) + 8 vermis parts
    assert vocab.resolve("Thalamus_L").display == "Left thalamus"
    assert vocab.resolve("Hippocampus_R").code == "H19"


def test_unknown_policy(vocab):
    t = vocab.resolve("Flux Capacitor_left")
    assert (t.group, t.known, t.name, t.laterality) == (UNKNOWN_GROUP, False, "flux capacitor", "left")
    assert "flux capacitor" not in vocab and "liver" in vocab
    with pytest.raises(UnknownTargetError, match="did you mean 'kidney'"):
        vocab.resolve("kidnee", unknown="error")
    strict = Vocabulary.from_dict({"unknown": "error"}, base=vocab)
    with pytest.raises(UnknownTargetError):
        strict.resolve("flux capacitor")
    assert strict.resolve("liver").group == "Abdomen"
    assert vocab.resolve("background").group == BACKGROUND_GROUP


def test_yaml_extension(vocab, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        """
groups: [Vessels]
targets:
  carotid artery: {group: Vessels, paired: true, synonyms: [carotid, ica]}
  kidney: {synonyms: [nephros]}
  flux capacitor: {group: Lesions, display: Flux capacitor (FC)}
synonyms:
  renal pelvis: kidney
patterns:
  - {match: '^liver segment ([1-8])$', target: liver}
"""
    )
    ext = Vocabulary.from_yaml(path)
    t = ext.resolve("ICA_left")
    assert (t.name, t.group, t.laterality, t.display) == (
        "carotid artery",
        "Vessels",
        "left",
        "Left carotid artery",
    )
    assert ext.resolve("Nephros_R").name == "kidney" and ext.resolve("renal pelvis").name == "kidney"
    assert ext.resolve("liver segment 4").detail == "4"
    assert ext.resolve("flux_capacitor").display == "Flux capacitor (FC)"
    assert "Vessels" in ext.groups and ext.resolve("pulmonary nodule").name == "lung nodule"
    assert not vocab.resolve("nephros").known  # the built-in vocabulary is unchanged
    assert vocab.extend(path).resolve("carotid").name == "carotid artery"
    path.write_text("targets:\n  carotid artery: {group: Vessels}\ngroups: [Vessels]\n")
    standalone = Vocabulary.from_yaml(path, base=None)
    assert not standalone.resolve("liver").known and standalone.resolve("carotid").known is False
    assert standalone.resolve("carotid artery").group == "Vessels" and standalone.groups == (
        *GROUPS,
        "Vessels",
    )
    # round trip through the YAML form
    again = Vocabulary.from_dict(ext.to_dict())
    for raw in ("ICA_left", "rib_left_2", "Thalamus_L", "pulmonary nodule", "vertebrae_C1"):
        assert again.resolve(raw) == ext.resolve(raw)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("targets:\n  foo: {group: Nowhere}\n", "not one of"),
        ("targets:\n  foo: {}\n", "needs a 'group'"),
        ("synonyms:\n  foo: no such target\n", "unknown target"),
        (
            "targets:\n  a: {group: Lesions, synonyms: [x]}\n  b: {group: Lesions, synonyms: [x]}\n",
            "already a name of",
        ),
        ("patterns:\n  - {match: '(', target: liver}\n", "not a valid regular expression"),
        ("targets: [\n", "invalid YAML"),
        ("colour: blue\n", "unknown vocabulary keys"),
        ("unknown: maybe\n", "policy"),
    ],
)
def test_yaml_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        Vocabulary.from_yaml(path)
    assert "bad.yaml" in str(err.value) or "policy" in match
