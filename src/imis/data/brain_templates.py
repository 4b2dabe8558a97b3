"""The training/evaluation data of imis-lite, built from the brain templates we may train on.

Sources (see ``ASSETS.md``; nothing is downloaded, nothing is copied into the repository):

* **Colin27** T1 (``ch2.nii.gz``) with the **AAL** atlas (116 structures, names in ``aal.nii.txt``) and
  the **Brodmann** areas (41), all on one 181 x 217 x 181 grid, from Debian ``mricron-data``
  (:data:`TEMPLATES_DIR`);
* the **MNI152 2009a** symmetric T1 with grey/white-matter probability maps, shipped inside the PyPI
  package ``nilearn`` (``nilearn/datasets/data``; located without importing nilearn).

:func:`build_template_datasets` writes, under one run folder ``OUT``::

    sources/                 inputs of `imis prepare`: case lists (.yaml) and derived label volumes
      colin27-aal.yaml             Colin27 T1 + aal_train.nii.gz (AAL without the held-out structures)
      colin27-aal-heldout.yaml     Colin27 T1 + aal_heldout.nii.gz (only the held-out structures)
      colin27-brodmann.yaml        Colin27 T1 + brodmann.nii.gz (in place)
      mni152-tissue.yaml           two cases on the MNI152 T1: mni152_tissue.nii.gz (1 grey, 2 white
                                   matter) and mni152_brain.nii.gz (3 brain, which overlaps them)
    colin27-aal/             IMed-361M datasets made by imis.data.prepare.prepare (train split)
    colin27-aal-heldout/     (test split: structures never seen in training)
    colin27-brodmann/        (train split)
    mni152-tissue/           (train split)
    datasets.json            the datasets, their role, split and counts, the held-out list, the slice steps

Every dataset is sliced along z, y and x with the IMed-361M protocol (MR: 0.5-99.5 percentile window),
keeping every Nth slice along each axis (``slice_step``; :data:`COLIN_SLICE_STEP`,
:data:`MNI_SLICE_STEP`), centred on the axis. The three Colin27 datasets use one image and one step, so
they hold the same slice indices and byte-identical images (same stem ``colin27_<axis>_<index>``, same
PNG bytes, same pixel digest in ``manifest.jsonl``): an embedding cache keyed by the image bytes or the
digest encodes each slice once.
The same holds for the two MNI152 cases. The MNI152 2009a template is exactly left-right symmetric,
so its sagittal slices come in identical mirror pairs: the second of a pair is left out
(``drop_duplicate_slices``); with the default step 3 the kept grid holds no such pair.

**Held-out structures.** :data:`HELDOUT_AAL_STRUCTURES` (12 bilateral pairs, 24 of 116 AAL labels) are
removed from ``colin27-aal`` (their voxels are background there) and are the only targets of
``colin27-aal-heldout``, whose every slice is in the test split: generalisation to unseen structures is
measured there, on images seen in training. Its test images are identical to training images of
``colin27-aal`` on purpose, so no leakage check against it is made.

**Rerunning** the build resumes: the derived volumes are rewritten only when their content changes (an
unchanged file keeps its modification time, so `imis prepare` keeps the finished case), and every
finished dataset is skipped. A different slice step for an existing folder is refused by `imis prepare`.
btcv-demo (its training split) is the other training set of imis-lite; it is already in the IMed format
and is read in place: :func:`build_template_datasets` only lists and counts it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imis.errors import InputError

if TYPE_CHECKING:
    from imis.data.prepare.config import PrepareConfig
    from imis.io import ImageData

__all__ = [
    "COLIN_SLICE_STEP",
    "DATASETS",
    "HELDOUT_AAL_STRUCTURES",
    "MNI_SLICE_STEP",
    "TEMPLATES_DIR",
    "DatasetSummary",
    "TemplateFiles",
    "TemplateSource",
    "build_template_datasets",
    "distinct_images",
    "heldout_aal_labels",
    "nilearn_data_dir",
    "read_aal_names",
    "summarize_dataset",
    "write_template_sources",
]

#: Debian ``mricron-data``: Colin27 (ch2), AAL, Brodmann.
TEMPLATES_DIR = Path("/usr/share/mricron/templates")

#: Every 2nd slice of Colin27 along each axis: 236 images hold an AAL mask (471 at step 1), about 330 s
#: of image encoding at 1.4 s per slice. Brodmann's 230 kept slices are a subset of them.
COLIN_SLICE_STEP = 2
#: Every 3rd slice of MNI152: 158 images (475 at step 1).
MNI_SLICE_STEP = 3

#: AAL structures held out of training, as whole bilateral pairs (``<name>_L`` and ``<name>_R``: the
#: mirror image of a held-out structure is not seen either). 12 pairs = 24 of the 116 labels (21 %).
#: Chosen as structures a click or a box defines well (compact, one connected piece in Colin27), of
#: every kind the atlas has, while a relative of each kind stays in training:
#:
#: * deep grey nuclei: caudate, putamen, thalamus (the pallidum stays in training);
#: * mesial temporal: hippocampus, amygdala (the parahippocampal gyrus stays);
#: * cortical gyri: insula, Heschl's gyrus, gyrus rectus, angular gyrus, calcarine cortex,
#:   supplementary motor area (the other 33 cortical pairs stay);
#: * cerebellum: lobule IX (the other 8 hemispheric lobules and the vermis stay).
#:
#: The Colin27 structures of ``imis demo`` (Thalamus_L, Caudate_R, Putamen_L, Hippocampus_R) are all
#: held out, so the demo reports structures imis-lite has not been trained on.
HELDOUT_AAL_STRUCTURES: tuple[str, ...] = (
    "Caudate",
    "Putamen",
    "Thalamus",
    "Hippocampus",
    "Amygdala",
    "Insula",
    "Heschl",
    "Rectus",
    "Angular",
    "Calcarine",
    "Supp_Motor_Area",
    "Cerebelum_9",
)

#: The datasets made here, in build order.
DATASETS: tuple[str, ...] = ("colin27-aal", "colin27-aal-heldout", "colin27-brodmann", "mni152-tissue")

SOURCES_DIR = "sources"
INDEX_FILE = "datasets.json"
_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "csf": "mni_icbm152_csf_tal_nlin_sym_09a_converted.nii.gz",  # not shipped by nilearn 0.14; used if present
}
#: Probability above which a voxel belongs to a tissue class (and to the brain: GM + WM (+ CSF)).
TISSUE_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------------------
# the source files
# ---------------------------------------------------------------------------------------------------------
def nilearn_data_dir() -> Path:
    """``nilearn/datasets/data`` of the installed nilearn, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "nilearn: not installed; the MNI152 2009a templates ship inside it "
            "(pip install --no-deps nilearn)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@dataclass(frozen=True)
class TemplateFiles:
    """Paths of the template volumes (all read in place)."""

    colin_t1: Path
    aal: Path
    aal_names: Path
    brodmann: Path
    mni_t1: Path
    mni_gm: Path
    mni_wm: Path
    mni_csf: Path | None = None

    @classmethod
    def locate(
        cls, templates_dir: str | os.PathLike = TEMPLATES_DIR, nilearn_data: str | os.PathLike | None = None
    ) -> TemplateFiles:
        """The files in ``templates_dir`` (mricron-data) and ``nilearn_data`` (default: nilearn's folder).

        Raises :class:`InputError` naming the first missing file and the package that provides it.
        """
        t = Path(templates_dir)
        n = Path(nilearn_data) if nilearn_data is not None else nilearn_data_dir()
        files = cls(
            colin_t1=t / "ch2.nii.gz",
            aal=t / "aal.nii.gz",
            aal_names=t / "aal.nii.txt",
            brodmann=t / "brodmann.nii.gz",
            mni_t1=n / _NILEARN_FILES["t1"],
            mni_gm=n / _NILEARN_FILES["gm"],
            mni_wm=n / _NILEARN_FILES["wm"],
            mni_csf=(n / _NILEARN_FILES["csf"]) if (n / _NILEARN_FILES["csf"]).is_file() else None,
        )
        for path in (files.colin_t1, files.aal, files.aal_names, files.brodmann):
            if not path.is_file():
                raise InputError(f"{path}: not found; install the Debian package mricron-data")
        for path in (files.mni_t1, files.mni_gm, files.mni_wm):
            if not path.is_file():
                raise InputError(f"{path}: not found; the MNI152 2009a templates ship inside PyPI nilearn")
        return files


def read_aal_names(path: str | os.PathLike) -> dict[int, str]:
    """``{value: name}`` from an AAL name table (``aal.nii.txt``: ``<value> <name> <code>`` per line)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the AAL names ({exc})") from None
    names: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) == 0:
            raise InputError(f"{p}: line {number} is not '<value> <name> ...': {line.strip()!r}")
        if int(parts[0]) in names:
            raise InputError(f"{p}: line {number}: label value {parts[0]} appears twice")
        names[int(parts[0])] = parts[1]
    if not names:
        raise InputError(f"{p}: holds no AAL names")
    return names


def heldout_aal_labels(
    names: dict[int, str], structures: Iterable[str] = HELDOUT_AAL_STRUCTURES
) -> dict[int, str]:
    """``{value: name}`` of the held-out AAL labels: both ``<structure>_L`` and ``<structure>_R`` of each."""
    by_name = {name: value for value, name in names.items()}
    out: dict[int, str] = {}
    for s in structures:
        for side in ("L", "R"):
            name = f"{s}_{side}"
            if name not in by_name:
                raise InputError(
                    f"held-out AAL structure {s!r}: the AAL names hold no {name!r} (a structure is held out "
                    "as a bilateral pair; give names without the _L/_R suffix)"
                )
            out[by_name[name]] = name
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------------
# the sources of `imis prepare`
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateSource:
    """One dataset to prepare: its case list, its `imis prepare` settings and its role for imis-lite."""

    name: str
    case_list: Path
    config: PrepareConfig
    role: str  # "train" or "eval"
    source: str  # "colin27" or "mni152": datasets of one source share their images


def write_template_sources(
    out: str | os.PathLike,
    files: TemplateFiles | None = None,
    *,
    colin_step: int = COLIN_SLICE_STEP,
    mni_step: int = MNI_SLICE_STEP,
    heldout: Iterable[str] = HELDOUT_AAL_STRUCTURES,
) -> list[TemplateSource]:
    """Write the case lists and derived label volumes under ``out/sources``; return the datasets to make.

    Derived volumes are rewritten only when their content changes, so that a rerun resumes.
    """
    from imis.data.prepare.config import PrepareConfig
    from imis.io import read_image

    for arg, step in (("colin_step", colin_step), ("mni_step", mni_step)):
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise InputError(f"{arg}: the slice step must be a whole number >= 1, got {step!r}")
    files = files or TemplateFiles.locate()
    src = Path(out) / SOURCES_DIR
    src.mkdir(parents=True, exist_ok=True)
    sources: list[TemplateSource] = []

    # -- Colin27: AAL split into training and held-out structures, Brodmann areas ------------------------
    names = read_aal_names(files.aal_names)
    held = heldout_aal_labels(names, heldout)
    aal = read_image(files.aal)
    values = _label_values(aal.array, files.aal)
    unnamed = sorted(set(np.unique(values).tolist()) - set(names) - {0})
    if unnamed:
        raise InputError(f"{files.aal}: holds label value(s) {unnamed} that {files.aal_names} does not name")
    is_held = np.isin(values, list(held))
    _write_volume_if_changed(src / "aal_train.nii.gz", np.where(is_held, 0, values), aal)
    _write_volume_if_changed(src / "aal_heldout.nii.gz", np.where(is_held, values, 0), aal)
    train_names = {v: n for v, n in names.items() if v not in held}
    brodmann = _label_values(read_image(files.brodmann).array, files.brodmann)
    areas = [int(v) for v in np.unique(brodmann) if v != 0]
    brodmann_names = {v: f"Brodmann area {v}" for v in areas}
    colin = [
        ("colin27-aal", "aal_train.nii.gz", train_names, 0.0, "train", "Colin27 T1, AAL without held-out"),
        ("colin27-aal-heldout", "aal_heldout.nii.gz", held, 1.0, "eval", "Colin27 T1, held-out AAL"),
        ("colin27-brodmann", str(files.brodmann), brodmann_names, 0.0, "train", "Colin27 T1, Brodmann"),
    ]
    for name, label, labels, test_fraction, role, what in colin:
        case_list = _write_case_list(
            src / f"{name}.yaml", name, what, labels, [("colin27", str(files.colin_t1), label)]
        )
        config = PrepareConfig(name=name, slice_step=colin_step, test_fraction=test_fraction)
        sources.append(TemplateSource(name, case_list, config, role, "colin27"))

    # -- MNI152 2009a: grey/white matter (one label map) and brain (another: it overlaps them) -------------
    gm = read_image(files.mni_gm)
    p_gm = _probability(gm.array, files.mni_gm)
    p_wm = _probability(_same_grid(read_image(files.mni_wm), gm).array, files.mni_wm)
    brain_p = p_gm + p_wm
    if files.mni_csf is not None:
        brain_p = brain_p + _probability(_same_grid(read_image(files.mni_csf), gm).array, files.mni_csf)
    tissue = np.zeros(gm.array.shape, dtype=np.uint8)  # GM and WM > 0.5 exclude each other (sum <= 1)
    tissue[(p_wm > TISSUE_THRESHOLD) & (p_wm > p_gm)] = 2
    tissue[(p_gm > TISSUE_THRESHOLD) & (p_gm >= p_wm)] = 1
    # one name table for both cases: the brain gets value 3 in its own label volume
    brain = np.where(brain_p > TISSUE_THRESHOLD, 3, 0).astype(np.uint8)
    _write_volume_if_changed(src / "mni152_tissue.nii.gz", tissue, gm)
    _write_volume_if_changed(src / "mni152_brain.nii.gz", brain, gm)
    case_list = _write_case_list(
        src / "mni152-tissue.yaml",
        "mni152-tissue",
        f"MNI152 2009a T1, grey / white matter and brain (probability > {TISSUE_THRESHOLD})",
        {1: "gray matter", 2: "white matter", 3: "brain"},
        [
            ("mni152_tissue", str(files.mni_t1), "mni152_tissue.nii.gz"),
            ("mni152_brain", str(files.mni_t1), "mni152_brain.nii.gz"),
        ],
    )
    # the 2009a template is exactly left-right symmetric: x slice i equals x slice n-1-i (masks too)
    config = PrepareConfig(
        name="mni152-tissue", slice_step=mni_step, test_fraction=0.0, drop_duplicate_slices=True
    )
    sources.append(TemplateSource("mni152-tissue", case_list, config, "train", "mni152"))
    return sources


def _label_values(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind not in "iu" or (array.size and int(array.min()) < 0):
        raise InputError(f"{path}: a label volume must hold non-negative integers, got dtype {array.dtype}")
    return array.astype(np.uint16, copy=False)


def _same_grid(image: ImageData, reference: ImageData) -> ImageData:
    if image.array.shape != reference.array.shape or not image.geometry.allclose(
        reference.geometry, atol=1e-3
    ):
        raise InputError(
            f"{image.source}: not on the grid of {reference.source} (shape {image.array.shape} vs "
            f"{reference.array.shape}); the MNI152 maps must share one grid"
        )
    return image


def _probability(array: np.ndarray, path: Path) -> np.ndarray:
    """A probability map in [0, 1]: float maps as stored, 8-bit maps (nilearn's "converted") / 255."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    a = array.astype(np.float32)
    if not np.isfinite(a).all() or (a.size and (float(a.min()) < -1e-3 or float(a.max()) > 1.001)):
        raise InputError(f"{path}: not a probability map (values outside [0, 1] or not finite)")
    return a


def _write_volume_if_changed(path: Path, labels: np.ndarray, reference: ImageData) -> None:
    """Write a label volume on ``reference``'s grid unless the file already holds exactly it."""
    from imis.io import read_image, write_label_map

    if path.is_file():
        try:
            old = read_image(path)
        except InputError:
            old = None
        if (
            old is not None
            and old.array.shape == labels.shape
            and np.array_equal(old.array, labels)
            and old.geometry.allclose(reference.geometry, atol=1e-6)
        ):
            return
    write_label_map(path, labels, reference=reference)


def _write_text_if_changed(path: Path, text: str) -> None:
    from imis.io import atomic_output

    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_case_list(
    path: Path, name: str, description: str, labels: dict[int, str], cases: list[tuple[str, str, str]]
) -> Path:
    """A case list for `imis prepare` (paths relative to the file unless absolute).

    Every target name must resolve to a known target of the built-in vocabulary.
    """
    import yaml

    from imis.data.vocabulary import Vocabulary

    vocab = Vocabulary.builtin()
    unknown = sorted(n for n in labels.values() if not vocab.resolve(n).known)
    if unknown:
        raise InputError(f"{path}: target names not in the vocabulary: {', '.join(unknown)}")

    data = {
        "name": name,
        "description": description,
        "modality": "mri",
        "labels": {int(k): v for k, v in sorted(labels.items())},
        "cases": [{"case": c, "image": image, "label": label} for c, image, label in cases],
    }
    _write_text_if_changed(path, yaml.safe_dump(data, sort_keys=False, width=110))
    return path


# ---------------------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------------------
@dataclass
class DatasetSummary:
    """Counts of one split of a dataset (a row of the summary table and of ``datasets.json``)."""

    dataset: str
    split: str
    role: str  # "train" or "eval"
    path: Path
    images: int = 0
    masks: int = 0
    targets: list[str] = field(default_factory=list)
    digests: set[str] = field(default_factory=set, repr=False)  # pixel digests (manifest.jsonl)
    status: str = ""  # "written", "resumed" or "in place"
    source: str | None = None  # "colin27", "mni152": datasets of one source share their images
    slice_step: int | None = None
    seconds: float = 0.0

    def row(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "images": self.images,
            "masks": self.masks,
            "targets": len(self.targets),
            "step": self.slice_step or "-",
            "status": self.status,
        }

    def to_json(self, root: Path) -> dict[str, Any]:
        try:
            path = self.path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            path = str(self.path.resolve())
        return {
            "dataset": self.dataset,
            "path": path,
            "split": self.split,
            "role": self.role,
            "images": self.images,
            "distinct_images": len(self.digests) if self.digests else None,
            "masks": self.masks,
            "slice_step": self.slice_step,
            "source": self.source,
            "targets": self.targets,
        }


def summarize_dataset(root: str | os.PathLike, split: str, role: str = "train") -> DatasetSummary:
    """Images, masks and target names of one split of an IMed dataset.

    Datasets made by `imis prepare` are counted from ``manifest.jsonl`` (no label file is opened); others
    (btcv-demo, as released) by reading the label files' channel areas.
    """
    from imis.data.formats import imed

    root = Path(root)
    ds = imed.read_dataset(root)
    out = DatasetSummary(dataset=str(ds.meta.get("name") or root.name), split=split, role=role, path=root)
    targets: set[str] = set()
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("split") != split:
                continue
            out.images += 1
            out.masks += len(rec["masks"])
            targets.update(ds.labels.get(int(m["label"]), f"label_{m['label']}") for m in rec["masks"])
            out.digests.add(rec["digest"])
    else:
        for entry in ds.split(split):
            _, areas = imed.label_areas(entry.label)
            out.images += 1
            out.masks += int(np.count_nonzero(areas))
            targets.update(ds.label_names(len(areas))[c] for c in np.flatnonzero(areas))
    out.targets = sorted(targets)
    return out


def build_template_datasets(
    out: str | os.PathLike,
    *,
    colin_step: int = COLIN_SLICE_STEP,
    mni_step: int = MNI_SLICE_STEP,
    files: TemplateFiles | None = None,
    btcv: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[DatasetSummary]:
    """Write the sources and prepare every dataset of :data:`DATASETS` under ``out`` (resumable).

    ``btcv``: a btcv-demo folder to list (its training split, read in place) beside our datasets.
    ``progress``: tqdm bars (``None``: when stderr is a terminal). ``log`` receives one line per dataset.
    Returns one :class:`DatasetSummary` per dataset split, in :data:`DATASETS` order (btcv-demo last), and
    writes them to ``out/datasets.json``. A case that fails is an :class:`InputError` naming its cause.
    """
    from tqdm import tqdm

    from imis.data.prepare.pipeline import prepare
    from imis.io import atomic_output

    root = Path(out)
    _check_run_folder(root, {"colin27": colin_step, "mni152": mni_step})
    files = files or TemplateFiles.locate()
    btcv_root = Path(btcv) if btcv is not None else None
    if btcv_root is not None and not (btcv_root / "dataset.json").is_file():
        raise InputError(f"{btcv_root}: not a btcv-demo folder (no dataset.json)")
    sources = write_template_sources(root, files, colin_step=colin_step, mni_step=mni_step)
    results: list[DatasetSummary] = []
    disable = None if progress is None else not progress
    bar = tqdm(sources, desc="templates", unit="dataset", disable=disable, leave=True)
    for s in bar:
        bar.set_postfix_str(s.name, refresh=True)
        t0 = time.perf_counter()
        summary = prepare(s.case_list, root / s.name, s.config, progress=progress)
        if summary.failures:
            f = summary.failures[0]
            raise InputError(f"{root / s.name}: case {f['case']} failed: {f['cause']}")
        split = "test" if s.config.test_fraction >= 1.0 else "train"
        row = summarize_dataset(root / s.name, split, s.role)
        row.dataset, row.source, row.slice_step = s.name, s.source, s.config.slice_step
        row.seconds = time.perf_counter() - t0
        row.status = "resumed" if summary.cases_resumed == summary.cases else "written"
        results.append(row)
        if log is not None:
            bar.write(
                f"{s.name}: {row.images} {split} images, {row.masks} masks, {len(row.targets)} targets "
                f"({row.status}, {row.seconds:.1f} s)"
            )
    bar.close()
    if btcv_root is not None:
        row = summarize_dataset(btcv_root, "train", "train")
        row.dataset, row.status = "btcv-demo", "in place"
        results.append(row)
    index = {
        "description": "imis-lite training/evaluation data (imis.data.brain_templates)",
        "heldout_aal_structures": list(HELDOUT_AAL_STRUCTURES),
        "slice_step": {"colin27": colin_step, "mni152": mni_step},
        "distinct_images": distinct_images(results),
        "datasets": [r.to_json(root) for r in results],
    }
    with atomic_output(root / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return results


def distinct_images(results: Iterable[DatasetSummary]) -> dict[str, int]:
    """Distinct images (pixel digests) per source over all datasets made here: what an encoder sees."""
    by_source: dict[str, set[str]] = {}
    for r in results:
        if r.digests:
            by_source.setdefault(r.source or r.dataset, set()).update(r.digests)
    return {k: len(v) for k, v in sorted(by_source.items())}


def _check_run_folder(root: Path, steps: dict[str, int]) -> None:
    """Refuse a folder that holds something else (e.g. the repository), or a run made with other steps."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder")
    ours = {SOURCES_DIR, INDEX_FILE, *DATASETS}
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ours)
    if foreign:
        raise InputError(
            f"{root}: holds other files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
            "give a new or empty run folder, or one made by imis prepare-templates"
        )
    try:
        earlier = json.loads((root / INDEX_FILE).read_text(encoding="utf-8")).get("slice_step")
    except (OSError, ValueError, AttributeError):
        earlier = None
    if isinstance(earlier, dict) and earlier != steps:

        def show(d: dict) -> str:
            return ", ".join(f"{k} {d.get(k)}" for k in sorted(steps))

        raise InputError(
            f"{root}: was built with slice steps {show(earlier)}, not {show(steps)}; rerun with the same "
            "--slice-step or choose a new --out folder"
        )
