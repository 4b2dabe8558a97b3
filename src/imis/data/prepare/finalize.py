"""The end of a `imis prepare` run, over every finished case: the counts (:class:`PrepareSummary`), the
case-level split, the leakage check, ``dataset.json``, ``manifest.jsonl`` and ``summary.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from imis.data.prepare.case import new_counts
from imis.data.prepare.config import PrepareConfig
from imis.data.prepare.folder import FORMAT_VERSION, MANIFEST, SUMMARY, done_record, json_bytes, write_atomic
from imis.data.prepare.layout import Layout
from imis.data.prepare.sources import SourceInfo
from imis.data.prepare.split import check_leakage, dataset_digests, split_cases


@dataclass
class PrepareSummary:
    """The outcome of a run (``summary.json`` holds the deterministic part)."""

    dataset: Path
    cases: int = 0
    cases_done: int = 0
    cases_resumed: int = 0
    cases_skipped: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=new_counts)
    train_images: int = 0
    test_images: int = 0
    train_cases: int = 0
    test_cases: int = 0
    leakage: dict = field(default_factory=dict)
    unknown_targets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kept_this_run: int = 0  # images written by this run (resumed cases excluded)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {
            "cases": self.cases,
            "cases_done": self.cases_done,
            "cases_failed": len(self.failures),
            "cases_skipped": self.cases_skipped,
            **self.counts,
            "train_cases": self.train_cases,
            "test_cases": self.test_cases,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "unknown_targets": self.unknown_targets,
            "leakage": self.leakage,
            "failures": self.failures,
        }

    def lines(self) -> list[str]:
        c = self.counts
        rate = self.kept_this_run / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"dataset: {self.dataset}",
            f"cases: {self.cases} ({self.cases_done} done, {self.cases_resumed} already done before this run, "
            f"{len(self.cases_skipped)} skipped, {len(self.failures)} failed)",
            f"slices: {c['slices']} seen, {c['slices_kept']} kept; excluded: {c['slices_excluded_aspect_ratio']} "
            f"aspect ratio > max, {c['slices_excluded_no_mask']} no mask left"
            + (
                f", {c['slices_excluded_duplicate']} duplicates" if c.get("slices_excluded_duplicate") else ""
            ),
            f"masks: {c['masks_kept']} kept; excluded: {c['masks_excluded_small']} below the minimum foreground, "
            f"{c['masks_excluded_component_limit']} beyond max_components",
            f"split: {self.train_images} training images ({self.train_cases} cases), {self.test_images} test "
            f"images ({self.test_cases} cases)",
        ]
        moved = self.leakage.get("test_images_moved_to_training", 0)
        if moved:
            out.append(
                f"leakage: {moved} test image(s) identical to training/other-dataset images moved to training"
            )
        if self.unknown_targets:
            out.append(f"targets not in the vocabulary (group Unknown): {', '.join(self.unknown_targets)}")
        for s in self.cases_skipped:
            out.append(f"skipped: {s['cause']}")
        if self.failures:  # each cause was printed as the case failed, and is in summary.json
            cases = ", ".join(f["case"] for f in self.failures)
            out.append(f"failed: {cases} (the cause of each is printed above and kept in summary.json)")
        out.append(f"time: {self.seconds:.1f} s ({self.kept_this_run} images written, {rate:.1f} per second)")
        return out


def finalize(
    root: Path,
    info: SourceInfo,
    cfg: PrepareConfig,
    layout: Layout,
    modality: tuple[str, ...],
    fingerprint: str,
    summary: PrepareSummary,
) -> None:
    """Split, leakage check, dataset.json, manifest.jsonl and summary.json from every finished case."""
    from imis.data.formats import imed

    records = {}
    for c in sorted(info.cases, key=lambda c: c.case):
        rec = done_record(root, c.case, fingerprint)
        if rec is not None:
            records[c.case] = rec
    summary.cases_done = len(records)
    counts = new_counts()
    for rec in records.values():
        for k in counts:
            counts[k] += int(rec.get("counts", {}).get(k, 0))
        if rec.get("status") == "skipped":
            summary.cases_skipped.append({"case": rec["case"], "cause": rec.get("reason", "")})
    summary.counts = counts

    per_case = {case: len(rec["slices"]) for case, rec in records.items()}
    train_cases, test_cases = split_cases(per_case, cfg.test_fraction, cfg.max_test_images, cfg.seed)
    split_of = {c: "train" for c in train_cases} | {c: "test" for c in test_cases}
    items = [
        (s["id"], case, split_of[case], s["digest"]) for case, rec in records.items() for s in rec["slices"]
    ]
    external: dict[str, list[str]] = {}
    for other in cfg.leakage_datasets:
        for digest, where in dataset_digests(other).items():
            external.setdefault(digest, []).extend(where)
    leak = check_leakage(items, external)
    moved = set(leak.moved)
    summary.leakage = leak.to_json()

    training, test, lines = [], [], []
    for case, rec in records.items():
        for s in rec["slices"]:
            split = "train" if s["id"] in moved else split_of[case]
            entry = {k: s[k] for k in ("image", "label", "imask") if s.get(k) is not None}
            entry.update(case=case, axis=s["axis"], slice=s["index"])  # read back as Sample.provenance
            (test if split == "test" else training).append(entry)
            lines.append(json.dumps({**s, "split": split}, ensure_ascii=False))
    summary.train_images, summary.test_images = len(training), len(test)
    summary.train_cases = sum(1 for c in train_cases if per_case.get(c))
    summary.test_cases = len(test_cases)

    name = cfg.name or root.resolve().name
    mods = {str(i): m for i, m in enumerate(modality)}
    description = cfg.description or f"{modality[0]}_{name}"
    extra = {
        "imis": {
            "format_version": FORMAT_VERSION,
            "manifest": MANIFEST,
            "summary": SUMMARY,
            "source": info.name,
            "targets": {
                str(i + 1): {
                    "name": ch.name,
                    "display": ch.display,
                    "group": ch.group,
                    "laterality": ch.laterality,
                    "component": ch.component,
                    "source_values": list(ch.values),
                }
                for i, ch in enumerate(layout.channels)
            },
            "split": {
                "seed": cfg.seed,
                "test_fraction": cfg.test_fraction,
                "max_test_images": cfg.max_test_images,
                "test_cases": test_cases,
            },
        }
    }
    write_atomic(root / MANIFEST, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    write_atomic(root / SUMMARY, json_bytes(summary.to_json()))
    imed.write_dataset_json(root, name, description, mods, layout.labels(), training, test, extra)
