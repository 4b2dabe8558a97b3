"""Case-level train/test split and the leakage check.

**Split.** All images of a case go to the same split. The cases that have at least one kept image are
sorted by id and shuffled with ``random.Random(seed)`` (the result depends on the seed and the case ids
only, not on the order the cases were processed in). The test split aims at
``round(test_fraction * n_cases)`` cases (at least one when there are two cases or more; never all of
them, so a single case goes to training), except at the ends: ``test_fraction`` 0 puts every case in
training and 1 every case in the test split, a single case included (a dataset made only to evaluate,
e.g. on structures held out of training). Cases are taken in shuffled order; a case whose images would
push the test split above ``max_test_images`` (3000) goes to training instead, and the next case is
tried. A case larger than the limit on its own therefore never enters the test split.

**Leakage.** An image's digest is the SHA-1 of its grey pixels and shape (a colour image whose three
channels are equal counts as grey, so an RGB re-encoding of the same slice matches). A test image whose
digest also occurs in the training split (from another case) or in one of the ``leakage_datasets`` is
reported and moved to the training split: it stays in the dataset but out of the test split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["LeakageReport", "check_leakage", "dataset_digests", "image_digest", "split_cases"]


def image_digest(image: np.ndarray) -> str:
    """SHA-1 of an 8-bit image's pixels and shape; equal-channel RGB hashes as its grey channel."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3]
        if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
            a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    a = np.ascontiguousarray(a)
    h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
    return h.hexdigest()


def split_cases(
    images_per_case: Mapping[str, int],
    test_fraction: float = 0.1,
    max_test_images: int = 3000,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """``(train_cases, test_cases)``, each sorted; see the module docstring for the rule."""
    cases = sorted(c for c, n in images_per_case.items() if n > 0)
    empty = sorted(c for c, n in images_per_case.items() if n <= 0)
    n = len(cases)
    f = Fraction(repr(float(test_fraction)))
    target = int(f * n + Fraction(1, 2)) if n else 0  # round half up, exactly
    if f >= 1:
        target = n
    elif n >= 2 and f > 0:
        target = min(max(target, 1), n - 1)
    else:
        target = 0
    order = list(cases)
    random.Random(seed).shuffle(order)
    test: list[str] = []
    total = 0
    for case in order:
        if len(test) >= target:
            break
        k = images_per_case[case]
        if total + k <= max_test_images:
            test.append(case)
            total += k
    test_set = set(test)
    train = [c for c in cases if c not in test_set] + empty
    return sorted(train), sorted(test)


@dataclass
class LeakageReport:
    """Test images found elsewhere; ``moved`` lists their stems, ``details`` where each was found."""

    moved: list[str] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)
    train_duplicate_groups: int = 0

    def to_json(self) -> dict:
        return {
            "test_images_moved_to_training": len(self.moved),
            "train_duplicate_groups": self.train_duplicate_groups,
            "details": self.details,
        }


def check_leakage(
    items: Iterable[tuple[str, str, str, str]],
    external: Mapping[str, list[str]] | None = None,
) -> LeakageReport:
    """Find test images that also occur in training (another case) or in an external dataset.

    ``items`` are ``(stem, case, split, digest)`` of every kept image; ``external`` maps a digest to the
    places (``"<dataset>:<image>"``) where other datasets hold it. Returns what must move out of test.
    """
    items = list(items)
    by_digest: dict[str, list[tuple[str, str, str]]] = {}
    for stem, case, split, digest in items:
        by_digest.setdefault(digest, []).append((stem, case, split))
    external = external or {}
    report = LeakageReport()
    for stem, case, split, digest in sorted(items):
        if split != "test":
            continue
        # Identical images within the test split (other test cases) are not leakage between splits;
        # occurrences in training or in another dataset are.
        in_train = [f"{s} (case {c})" for s, c, sp in by_digest[digest] if sp == "train" and c != case]
        elsewhere = list(external.get(digest, []))
        if in_train or elsewhere:
            report.moved.append(stem)
            report.details.append({"image": stem, "case": case, "identical_to": sorted(in_train) + elsewhere})
    report.train_duplicate_groups = sum(
        1 for group in by_digest.values() if sum(1 for _, _, sp in group if sp == "train") > 1
    )
    return report


def dataset_digests(root: str | Path) -> dict[str, list[str]]:
    """Digest -> ``["<dataset>:<image>", ...]`` for every image listed by an IMed-layout dataset."""
    from imis.data.formats import imed

    ds = imed.read_dataset(root)
    out: dict[str, list[str]] = {}
    for e in ds.entries:
        digest = image_digest(imed.read_image(e.image))
        out.setdefault(digest, []).append(f"{Path(root).name}:{e.image.relative_to(ds.root)}")
    return out
