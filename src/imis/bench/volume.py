"""Volume protocols of ``imis bench``: one prompt on one slice, propagation, 3D metrics.

``--protocol volume``: per 3D structure (each label value of each case), the slice where it is largest
(``--seed-axis z``, the default: its largest axial slice; ``largest``: the largest cross-section over
the z, y and x slices by area in mm^2, as a user picks the view where it is biggest;
imis.prompts.seed.largest_section) is prompted with a tight box, one click at its interior point, or its
name as text (the kinds the model takes), then :meth:`imis.session.VolumeSession.propagate` fills the
other slices of that axis (default rules) and ``--refine orthogonal`` (the default; ``none`` to skip)
applies :meth:`~imis.session.VolumeSession.refine_orthogonal`. Both defaults were chosen on Colin27 AAL
training structures (docs/volumes.md: the refinement added 0.02 3D Dice for box and click seeds; the
largest section over three axes helped click seeds, +0.04, and cost box seeds 0.06). Scored in 3D: Dice, NSD at ``--nsd-tolerance`` mm
and HD95 (mm), with the voxel spacing; each row records the seed's axis and slice.

``--protocol volume-iterative``: the box start, then ``--max-interactions - 1`` rounds of one correction
click (RITM simulator) on the worst slice (most wrong voxels), after which propagation restarts from
that slice (it is bounded by the slices already prompted); 3D Dice after every interaction.

Datasets (``--data``): a nnU-Net v2 / MSD raw folder (``dataset.json`` + ``imagesTr``/``labelsTr``;
``labels`` names the structures), or a text file listing ``image,label`` volume pairs one a line
(paths relative to the file; ``#`` comments). Volumes are read with :func:`imis.io.read_image`, so any
format it reads works. Embeddings are cached per case, so all structures and prompt kinds of a case
share one encoding of each slice.

RUN_DIR receives ``volume_results.jsonl`` (one line per case, structure, model and kind; a rerun
resumes), ``summary.json`` and ``leaderboard.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imis.bench.metrics import mask_metrics
from imis.errors import InputError, PromptError
from imis.io import atomic_output, read_image
from imis.prompts.seed import largest_section, seed_axes

__all__ = [
    "VOLUME_PROTOCOLS",
    "VolumeBenchConfig",
    "VolumeCase",
    "read_volume_dataset",
    "run_volume_bench",
    "write_volume_report",
]

VOLUME_PROTOCOLS = ("volume", "volume-iterative")
#: Refinements after the propagation: none, or orthogonal consensus (imis.session.orthogonal).
REFINES = ("none", "orthogonal")


@dataclass(frozen=True)
class VolumeCase:
    case_id: str
    image: Path
    label: Path


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read dataset.json ({exc})") from None


def _names(meta: dict) -> dict[int, str]:
    """{value: name} from MSD ("labels": {"1": "liver"}) or nnU-Net v2 ("labels": {"liver": 1})."""
    out = {}
    for k, v in (meta.get("labels") or {}).items():
        if str(k).isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int):
            out[v] = str(k)
    out.pop(0, None)
    return out


def read_volume_dataset(spec: Path) -> tuple[list[VolumeCase], dict[int, str]]:
    """The (image, label) volume pairs and structure names of a raw folder or a pair list."""
    spec = Path(spec)
    if spec.is_file():
        return _read_pair_list(spec), {}
    meta_file = spec / "dataset.json"
    if not meta_file.is_file():
        raise InputError(f"{spec}: neither a pair list nor a nnU-Net/MSD folder (no dataset.json)")
    meta = _json(meta_file)
    cases = []
    if isinstance(meta.get("training"), list) and meta["training"]:  # MSD
        for entry in meta["training"]:
            img, lab = spec / entry["image"], spec / entry["label"]
            cases.append(VolumeCase(lab.name.split(".")[0], img, lab))
    else:  # nnU-Net v2: imagesTr/{case}_0000.ext, labelsTr/{case}.ext
        ext = meta.get("file_ending", ".nii.gz")
        for lab in sorted((spec / "labelsTr").glob(f"*{ext}")):
            case = lab.name[: -len(ext)]
            cases.append(VolumeCase(case, spec / "imagesTr" / f"{case}_0000{ext}", lab))
    if not cases:
        raise InputError(f"{spec}: dataset.json lists no training cases and labelsTr/ holds none")
    missing = [str(c.image) for c in cases if not c.image.exists()] + [
        str(c.label) for c in cases if not c.label.exists()
    ]
    if missing:
        raise InputError(f"{spec}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    return cases, _names(meta)


def _read_pair_list(path: Path) -> list[VolumeCase]:
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.replace("\t", ",").split(",")]
        if len(parts) != 2:
            raise InputError(f"{path}: line {n} is not 'image,label': {line!r}")
        img, lab = (path.parent / p for p in parts)
        for p in (img, lab):
            if not p.exists():
                raise InputError(f"{path}: line {n}: {p} does not exist")
        cases.append(VolumeCase(lab.name.split(".")[0], img, lab))
    if not cases:
        raise InputError(f"{path}: lists no image,label pairs")
    return cases


def _seed_prompts(gt2d: np.ndarray, name: str | None, prompt_types: frozenset[str]) -> dict[str, dict]:
    from imis.prompts import center_click, tight_box
    from imis.prompts.text import text_prompt

    c = center_click(gt2d)
    kinds = {"box": {"box": tight_box(gt2d)}, "click": {"clicks": [(c.x, c.y, True)]}}
    if name and "text" in prompt_types:
        kinds["text"] = {"text": text_prompt(name)}
    needs = {"box": "box", "click": "point", "text": "text"}
    return {k: v for k, v in kinds.items() if needs[k] in prompt_types}


def _score(vs, gt: np.ndarray, spacing: tuple[float, ...], tol: float) -> dict:
    m = mask_metrics(vs.object_mask, gt, spacing, tol)
    return {"dice": m.dice, "nsd": m.nsd, "hd95": m.hd95}


def _walk(vs, axis: int, cfg: dict) -> None:
    """Propagate from the current slice, then refine as configured."""
    vs.propagate()
    if cfg.get("refine", "orthogonal") == "orthogonal":
        vs.refine_orthogonal(axis=axis)


def run_structure(
    vs, gt: np.ndarray, axes: tuple[int, ...], name: str | None, protocol: str, cfg: dict
) -> list[dict]:
    """Rows (kind, metrics, seconds, seed axis and slice) for one structure of the open volume; the seed
    is its largest cross-section over ``axes`` (by mm^2)."""
    from imis.prompts.clicks import ritm_click

    axis, seed, _ = largest_section(gt, cfg["spacing"], axes)
    moved = np.moveaxis(gt, axis, 0)
    kinds = _seed_prompts(moved[seed], name, vs.model.prompt_types)
    if protocol == "volume-iterative":
        kinds = {k: v for k, v in kinds.items() if k == "box"}
    rows = []
    for kind, prompt in kinds.items():
        t0 = time.perf_counter()
        vs.reset()
        vs.set_slice(axis, seed)
        if vs.predict(**prompt).mask.any():
            _walk(vs, axis, cfg)
        row = {"kind": kind, "axis": "zyx"[axis], "seed": seed, **_score(vs, gt, cfg["spacing"], cfg["tol"])}
        if protocol == "volume-iterative":
            row["dice_per_interaction"] = [row["dice"]]
            for _ in range(cfg["max_interactions"] - 1):
                pred = np.moveaxis(vs.object_mask, axis, 0)
                worst = int(np.argmax((pred ^ moved).reshape(moved.shape[0], -1).sum(axis=1)))
                click = ritm_click(pred[worst], moved[worst])
                if click is None:
                    break
                vs.set_slice(axis, worst)
                vs.add_click(click.x, click.y, click.positive)
                if vs.plane(axis, worst).any():
                    _walk(vs, axis, cfg)
                row["dice_per_interaction"].append(_score(vs, gt, cfg["spacing"], cfg["tol"])["dice"])
            row.update(_score(vs, gt, cfg["spacing"], cfg["tol"]))
        row["seconds"] = time.perf_counter() - t0
        row["slices_filled"] = int(np.moveaxis(vs.object_mask, axis, 0).any(axis=(1, 2)).sum())
        rows.append(row)
    return rows


@dataclass(frozen=True)
class VolumeBenchConfig:
    models: tuple[str, ...]
    data: Path
    protocol: str = "volume"
    seed_axis: str = "z"
    refine: str = "orthogonal"
    nsd_tolerance_mm: float = 1.0
    max_interactions: int = 5
    cases: tuple[str, ...] = ()
    structures: tuple[int, ...] = ()
    device: str = "cpu"


def run_volume_bench(config: VolumeBenchConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run a volume protocol; write RUN_DIR/volume_results.jsonl, summary.json, leaderboard.md."""
    from tqdm import tqdm

    from imis.models import load_model
    from imis.session import VolumeSession

    if config.protocol not in VOLUME_PROTOCOLS:
        raise InputError(
            f"--protocol {config.protocol!r}: volume protocols are {', '.join(VOLUME_PROTOCOLS)}"
        )
    cases, names = read_volume_dataset(config.data)
    if config.cases:
        unknown = set(config.cases) - {c.case_id for c in cases}
        if unknown:
            raise InputError(f"--cases: {sorted(unknown)} not in {config.data}")
        cases = [c for c in cases if c.case_id in config.cases]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "volume_results.jsonl"
    done = _done_keys(results)
    try:
        axes = seed_axes(config.seed_axis)
    except PromptError as exc:
        raise InputError(f"--seed-axis: {exc}") from None
    if config.refine not in REFINES:
        raise InputError(f"--refine {config.refine!r}: one of {', '.join(REFINES)}")
    for model_name in config.models:
        model = load_model(model_name, device=config.device)
        for case in tqdm(cases, desc=f"{model_name} volumes", disable=not progress):
            image, labels = read_image(case.image), read_image(case.label)
            _check_pair(image, labels, case)
            values = [int(v) for v in np.unique(labels.array) if v != 0]
            values = [v for v in values if not config.structures or v in config.structures]
            if all((case.case_id, v, model_name) in done for v in values):
                continue
            vs = VolumeSession(model, cache_size=_cache_size(image.array.shape, axes, config.refine))
            vs.open(image)
            cfg = {
                "spacing": tuple(reversed(image.geometry.spacing)),
                "tol": config.nsd_tolerance_mm,
                "max_interactions": config.max_interactions,
                "refine": config.refine,
            }
            for v in values:
                if (case.case_id, v, model_name) in done:
                    continue
                rows = run_structure(vs, labels.array == v, axes, names.get(v), config.protocol, cfg)
                with results.open("a", encoding="utf-8") as f:
                    for row in rows:
                        f.write(
                            json.dumps(
                                {
                                    "case": case.case_id,
                                    "label": v,
                                    "name": names.get(v),
                                    "model": model_name,
                                    "protocol": config.protocol,
                                    **row,
                                }
                            )
                            + "\n"
                        )
    return write_volume_report(out_dir, config)


def _cache_size(shape: tuple[int, ...], axes: tuple[int, ...], refine: str) -> int:
    """Slice embeddings kept per case: every slice of the axes a walk may run along, so the structures
    of a case share them; with refinement the other axes' too, at most 512 (4 MiB each: 2 GiB)."""
    if refine == "orthogonal":
        return min(512, sum(shape))
    return max(shape[a] for a in axes)


def _done_keys(results: Path) -> set[tuple[str, int, str]]:
    if not results.is_file():
        return set()
    rows = [json.loads(x) for x in results.read_text(encoding="utf-8").splitlines() if x.strip()]
    return {(r["case"], r["label"], r["model"]) for r in rows}


def _check_pair(image, labels, case: VolumeCase) -> None:
    if image.kind != "volume" or labels.array.shape != image.array.shape:
        raise InputError(
            f"{case.label}: label volume of shape {labels.array.shape} does not match the image "
            f"{case.image} of shape {image.array.shape}"
        )
    if not np.allclose(labels.geometry.spacing, image.geometry.spacing, atol=1e-3):
        raise InputError(f"{case.label}: spacing {labels.geometry.spacing} differs from the image's")


def write_volume_report(out_dir: Path, config: VolumeBenchConfig) -> dict:
    """summary.json and leaderboard.md from volume_results.jsonl (mean Dice, NSD, median HD95)."""
    rows = [json.loads(x) for x in (out_dir / "volume_results.jsonl").read_text().splitlines() if x.strip()]
    table: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in dict.fromkeys(r["kind"] for r in rows if r["model"] == model):
            sel = [r for r in rows if r["model"] == model and r["kind"] == kind]
            hd = [r["hd95"] for r in sel]
            entry = {
                "n": len(sel),
                "dice": float(np.mean([r["dice"] for r in sel])),
                "nsd": float(np.mean([r["nsd"] for r in sel])),
                "hd95_median_mm": float(np.median(hd)),
                "seconds_per_structure": float(np.mean([r["seconds"] for r in sel])),
            }
            if "dice_per_interaction" in sel[0]:
                n = max(len(r["dice_per_interaction"]) for r in sel)
                # A structure that needed no more clicks keeps its last Dice for the later interactions.
                padded = [
                    r["dice_per_interaction"]
                    + [r["dice_per_interaction"][-1]] * (n - len(r["dice_per_interaction"]))
                    for r in sel
                ]
                entry["dice_per_interaction"] = [float(v) for v in np.mean(padded, axis=0)]
            table[f"{model} / {kind}"] = entry
    summary = {
        "protocol": config.protocol,
        "data": str(config.data),
        "seed_axis": config.seed_axis,
        "refine": config.refine,
        "nsd_tolerance_mm": config.nsd_tolerance_mm,
        "results": table,
    }
    with atomic_output(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    tol = f"{config.nsd_tolerance_mm:g}"
    lines = [
        f"# {config.protocol}: {config.data}",
        "",
        f"| model / prompt | structures | 3D Dice | NSD@{tol}mm | HD95 median (mm) | s / structure |",
        "|---|---|---|---|---|---|",
    ]
    for key, e in table.items():
        lines.append(
            f"| {key} | {e['n']} | {e['dice']:.3f} | {e['nsd']:.3f} | {e['hd95_median_mm']:.2f} | "
            f"{e['seconds_per_structure']:.1f} |"
        )
    with atomic_output(out_dir / "leaderboard.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return summary


def cmd_bench_volume(args, models: tuple[str, ...]) -> int:
    """``imis bench --protocol volume|volume-iterative`` (called by imis.bench.commands)."""
    config = VolumeBenchConfig(
        models=models,
        data=Path(args.data),
        protocol=args.protocol,
        seed_axis=args.seed_axis,
        refine=args.refine,
        nsd_tolerance_mm=args.nsd_tolerance,
        max_interactions=args.max_interactions,
        cases=tuple(c.strip() for c in (args.cases or "").split(",") if c.strip()),
        device=args.device,
    )
    summary = run_volume_bench(config, args.output, progress=not args.no_progress)
    print((Path(args.output) / "leaderboard.md").read_text(encoding="utf-8"), end="")
    return 0 if summary["results"] else 1
