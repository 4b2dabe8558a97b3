"""The main job on embedded real data (`make run`, `imis demo`).

1. Reads btcv-demo's test split (real abdominal CT, cases 037-039, 14 slices, 85 masks).
2. Prepares a small Colin27 + AAL set (a real T1 MRI with atlas labels, Debian mricron-data) with
   `imis prepare`'s Python API: four structures on a handful of axial slices, into ``OUT/colin27-aal``,
   then gives it its interactive masks with `imis automask`'s Python API (``imask/``, a 16 x 16 click grid
   of the default model, GT quality control; the benchmark does not read them).
3. Runs the ``single`` and ``iterative`` benchmark protocols on both, for every registry model whose
   weights are available (``ModelSpec.weights_path()`` is not None) and the weight-free baselines GrabCut
   and random walker, with seed-0 prompt files shared by every model.
4. Prints the leaderboard (Dice per prompt kind, Dice@k and NoC@85/90 of the iterative protocol, and the
   per-organ Dice of the tight box) and writes the reports (``imis report``'s Markdown, CSV and figures)
   under ``OUT``, one run directory per (dataset, protocol), plus ``OUT/leaderboard.md`` merging them,
   ``OUT/results.json`` and a liver overlay.

Each image is encoded once per model for both protocols (an in-memory embedding cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imis.cli_options import add_progress_argument
from imis.errors import ImisError, InputError

COLIN_DIR = Path("/usr/share/mricron/templates")
#: AAL structures of the Colin27 set (label value -> AAL name) and the axial slices prepared
AAL_TARGETS = {77: "Thalamus_L", 72: "Caudate_R", 73: "Putamen_L", 38: "Hippocampus_R"}
COLIN_SLICES = (70, 75, 80, 85)
BASELINES = ("grabcut", "random-walker")
PROTOCOLS = ("single", "iterative")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class CachedModel:
    """A model whose ``encode`` is cached per image content, so the protocols share one encoding."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = model.name
        self.prompt_types = model.prompt_types
        self.cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:  # check_supported, multimask, license, ...
        return getattr(self.model, name)

    def encode(self, image: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        arr = np.ascontiguousarray(image)
        key = hashlib.sha1(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.model.encode(arr, *args, **kwargs)
        return self.cache[key]

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.decode(*args, **kwargs)


def available_models() -> list[str]:
    """Registry models whose weights are available here (embedded or found), in registry order."""
    from imis.models.registry import REGISTRY

    names = []
    for name, spec in REGISTRY.items():
        try:
            if spec.weights_path() is not None:
                names.append(name)
        except ImisError:
            continue
    return names


def _aal_names() -> dict[int, str]:
    names = {}
    for line in (COLIN_DIR / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def prepare_colin(out: Path, progress: bool = True) -> Path | None:
    """The Colin27 + AAL set: the structures of ``AAL_TARGETS`` on the axial slices ``COLIN_SLICES``,
    written as an nnU-Net raw folder and prepared with :func:`imis.data.prepare.prepare` (axis z only,
    MR percentile window, the IMed-361M rules). Returns the dataset folder, or None where the templates
    are not installed."""
    from imis.data.formats.msd import write_nnunet_raw
    from imis.data.prepare import PrepareConfig, prepare
    from imis.io import Geometry, ImageData, read_image

    t1, aal = COLIN_DIR / "ch2.nii.gz", COLIN_DIR / "aal.nii.gz"
    if not (t1.is_file() and aal.is_file() and (COLIN_DIR / "aal.nii.txt").is_file()):
        return None
    names = _aal_names()
    colin, atlas = read_image(t1), read_image(aal)
    z = list(COLIN_SLICES)
    step = z[1] - z[0]
    geo = colin.geometry
    # the chosen slices as a volume of their own: every `step`-th slice from the first, kept in place
    spacing = (geo.spacing[0], geo.spacing[1], geo.spacing[2] * step)
    grid = Geometry(spacing, geo.index_to_physical((0, 0, z[0])), geo.direction)
    image = ImageData(np.ascontiguousarray(colin.array[z]), grid, kind="volume")
    lab = np.where(np.isin(atlas.array[z], list(AAL_TARGETS)), atlas.array[z], 0).astype(np.int16)
    src = out / "colin27-aal-src"
    write_nnunet_raw(
        src, [("colin27", image, lab)], {v: names[v] for v in AAL_TARGETS}, "MRI", name="Colin27AAL"
    )
    dataset = out / "colin27-aal"
    summary = prepare(src, dataset, PrepareConfig(name="colin27-aal", axes=("z",)), progress=progress)
    if not summary.ok:
        raise InputError(f"{dataset}: preparing Colin27 failed: {summary.failures}")
    return dataset


AUTOMASK_POINTS = 16  # a 16 x 16 grid keeps the step within seconds per slice on a CPU


def automask_colin(dataset: Path, progress: bool = True) -> dict[str, Any]:
    """`imis automask` on the prepared Colin27 set (resumable: finished slices are skipped)."""
    from imis.automask.run import run_automask
    from imis.automask.settings import AutomaskSettings
    from imis.models.registry import default_model_name

    model = default_model_name()
    s = run_automask(
        dataset, AutomaskSettings(points_per_side=AUTOMASK_POINTS), model=model, progress=progress
    )
    if s.failures:
        raise InputError(f"{dataset}: automask failed: {[f.cause for f in s.failures]}")
    return {"model": model, "points_per_side": AUTOMASK_POINTS, **s.row(), "seconds": round(s.seconds, 1)}


@dataclass(frozen=True)
class Task:
    """One (dataset, model) pair: both protocols, run into ``OUT/<label>-<protocol>/parts/<model>``."""

    label: str
    data: str
    split: str
    model: str
    out: str
    threads: int | None = None
    overlay: bool = False
    limit_images: int | None = None


def run_task(task: Task) -> dict[str, Any]:
    """Run the protocols of one task (in a worker process or in this one); the model encodes each image
    once for both protocols."""
    from imis.bench.config import BenchConfig
    from imis.bench.runner import load_any_model, run_bench

    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    t0 = time.perf_counter()
    model = CachedModel(load_any_model(task.model))
    seconds = {}
    for protocol in PROTOCOLS:
        cfg = BenchConfig(
            models=(task.model,),
            data=Path(task.data),
            split=task.split,
            protocol=protocol,
            seed=0,
            limit_images=task.limit_images,
            model_loader=lambda _name: model,
        )
        t = time.perf_counter()
        run_bench(cfg, _part(Path(task.out), task.label, protocol, task.model), progress=False, report=False)
        seconds[protocol] = round(time.perf_counter() - t, 1)
    overlay = _overlay(model, Path(task.data), Path(task.out)) if task.overlay else None
    return {
        "task": f"{task.label}/{task.model}",
        "seconds": seconds,
        "total": round(time.perf_counter() - t0, 1),
        "overlay": None if overlay is None else str(overlay),
    }


def _part(out: Path, label: str, protocol: str, model: str) -> Path:
    return out / f"{label}-{protocol}" / "parts" / model


def merge_parts(run_dir: Path, models: list[str]) -> dict[str, Any]:
    """One run directory from the per-model parts: the (identical) prompt file, the rows of every model,
    the configuration naming them all; then the reports. Returns the summary."""
    from imis.bench.report import write_report

    prompts, rows, config = None, [], None
    for m in models:
        part = run_dir / "parts" / m
        data = (part / "prompts.json").read_bytes()
        if prompts is not None and data != prompts:
            raise InputError(
                f"{part}: prompt file differs from the other models' (not the same data and seed)"
            )
        prompts = data
        rows.append((part / "predictions.jsonl").read_text())
        config = json.loads((part / "config.json").read_text())
    config["models"] = list(models)
    (run_dir / "prompts.json").write_bytes(prompts)
    (run_dir / "predictions.jsonl").write_text("".join(rows))
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return write_report(run_dir)


def run_tasks(tasks: list[Task], workers: int) -> list[dict[str, Any]]:
    """Run the tasks, in order, on ``workers`` processes (1: in this process); prints each as it ends."""
    done = []

    def report(r: dict[str, Any]) -> None:
        parts = ", ".join(f"{p} {s:.0f} s" for p, s in r["seconds"].items())
        print(f"  done {r['task']}: {parts}", flush=True)
        done.append(r)

    if workers <= 1:
        for t in tasks:
            report(run_task(t))
        return done
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked torch (OpenMP pools, threads) can hang; each worker imports afresh. One BLAS/OpenMP
    # thread per worker: with the workers filling the cores, OpenBLAS's threads only fight each other
    # (the random walker's conjugate gradients ran 13x slower with 2 threads on a busy 2-core machine).
    ctx = multiprocessing.get_context("spawn")
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_task, t) for t in tasks]
            for f in as_completed(futures):
                report(f.result())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return done


def _overlay(model: CachedModel, data: Path, out: Path) -> Path | None:
    """The tight-box prediction of the largest liver of the split, as a label map and an overlay."""
    from imis.data.formats import imed
    from imis.io import write_label_map, write_overlay_png
    from imis.models.interactive import PromptSpec
    from imis.prompts import tight_box

    ds = imed.read_dataset(data)
    best = None
    for entry in ds.split("test"):
        lab = imed.read_label(entry.label)
        names = ds.label_names(lab.shape[0])
        if "liver" in names and (best is None or lab[names.index("liver")].sum() > best[0]):
            best = (int(lab[names.index("liver")].sum()), entry, lab[names.index("liver")])
    if best is None:
        return None
    _, entry, gt = best
    image = imed.read_image(entry.image)
    pred = model.decode(model.encode(image), PromptSpec(box=np.array(tight_box(gt), dtype=np.float64)))
    write_label_map(out / f"{entry.stem}_liver.png", pred.mask.astype(np.uint8))
    path = out / f"{entry.stem}_liver_overlay.png"
    write_overlay_png(path, image, pred.mask.astype(np.uint8))
    return path


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def leaderboard(runs: dict[str, dict[str, Any]], max_k: int = 9) -> str:
    """Markdown: per dataset, the single-protocol Dice per prompt kind, the iterative Dice@1/3/5/9 and
    NoC@85/90, and the per-target Dice of the tight box (mask-level means)."""
    lines = []
    for dataset in dict.fromkeys(key.rsplit("/", 1)[0] for key in runs):
        single, iterative = runs.get(f"{dataset}/single"), runs.get(f"{dataset}/iterative")
        lines += [f"## {dataset}", ""]
        if single:
            res = single["results"]
            kinds = [
                k
                for k in ("click", "box", "text", "click+box", "box+text", "click+text")
                if any(k in per for per in res.values())
            ]
            masks = max((e["n_masks"] for per in res.values() for e in per.values()), default=0)
            lines += [f"single protocol, {masks} masks: Dice (mask level / image level)", ""]
            lines += ["| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for model, per in res.items():
                cells = [
                    f"{_fmt(per[k]['dice_mask'])} / {_fmt(per[k]['dice_image'])}" if k in per else "n/a"
                    for k in kinds
                ]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
        if iterative:
            res, noc = iterative["results"], iterative["noc"]
            ks = [k for k in (1, 3, 5, max_k) if k <= max_k]
            lines += [
                "iterative protocol (centre click, then RITM correction clicks, all clicks fed back with the "
                "previous logits): mask-level Dice after k clicks, NoC@85/90 (cap 20)",
                "",
                "| model | " + " | ".join(f"Dice@{k}" for k in ks) + " | NoC@85 | NoC@90 | failed@90 |",
                "|---|" + "---|" * (len(ks) + 3),
            ]
            for model in list(dict.fromkeys([*res, *noc])):
                per = res.get(model, {})
                cells = [_fmt(per.get(f"iterative@{k}", {}).get("dice_mask")) for k in ks]
                n = noc.get(model)
                tail = (
                    [f"{n['noc85']:.2f}", f"{n['noc90']:.2f}", f"{n['failures90']}/{n['n_masks']}"]
                    if n
                    else ["n/a"] * 3
                )
                lines.append(f"| {model} | " + " | ".join(cells + tail) + " |")
            lines.append("")
        if single:
            res = single["results"]
            boxed = [m for m, per in res.items() if "box" in per]
            targets = sorted({t for m in boxed for t in res[m]["box"]["by_target"]})
            if boxed and targets:
                lines += ["per target, tight box: Dice", ""]
                lines += ["| target | " + " | ".join(boxed) + " |", "|---|" + "---|" * len(boxed)]
                for t in targets:
                    cells = [_fmt(res[m]["box"]["by_target"].get(t, {}).get("dice_mask")) for m in boxed]
                    lines.append(f"| {t} | " + " | ".join(cells) + " |")
                lines.append("")
        for summary in (single, iterative):
            if summary and summary["errors"]:
                lines += [f"{len(summary['errors'])} error(s): see the run's leaderboard.md", ""]
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="folder holding data/btcv-demo")
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated models and baselines (default: every registry model with weights available, "
        "grabcut and random-walker)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes, one (dataset, model) pair each, with one torch thread each (default 2; "
        "1: in this process with torch's default threads)",
    )
    ap.add_argument(
        "--resume", action="store_true", help="keep the predictions of an earlier (interrupted) demo in OUT"
    )
    ap.add_argument("--limit-images", type=int, default=None, help="only the first N images (quick checks)")
    add_progress_argument(ap, "no progress bar while preparing")


def _check_models(names: list[str]) -> None:
    from imis.bench.runner import BASELINES as KNOWN_BASELINES
    from imis.models.registry import get_spec

    if not names:
        raise InputError("no model given: pass --models NAME[,NAME...]")
    for n in names:
        if n not in KNOWN_BASELINES:
            get_spec(n)  # unknown names fail here, before any work


def run(args: argparse.Namespace) -> int:
    """The demo as a CLI command; user errors propagate as ImisError (the CLI prints them)."""
    t_start = time.perf_counter()
    btcv = args.shared / "data" / "btcv-demo"
    if not (btcv / "dataset.json").is_file():
        raise InputError(f"{btcv}: btcv-demo not found (pass --shared)")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = (
        [m.strip() for m in args.models.split(",") if m.strip()]
        if args.models
        else [*available_models(), *BASELINES]
    )
    _check_models(names)
    print(f"models: {', '.join(names)}", flush=True)

    datasets = [("btcv-demo", btcv, "test")]
    colin = prepare_colin(out, progress=not args.no_progress)
    automask = None
    if colin is not None:
        datasets.append(("colin27-aal", colin, "train"))  # one case: prepare puts it in the train split
        automask = automask_colin(colin, progress=not args.no_progress)
        print(f"automask on colin27-aal: {automask}", flush=True)
    else:
        print("Colin27/AAL not installed (apt-get install mricron-data): brain part skipped", file=sys.stderr)
    if not args.resume:
        for label, _, _ in datasets:
            for protocol in PROTOCOLS:
                shutil.rmtree(out / f"{label}-{protocol}", ignore_errors=True)

    threads = 1 if args.workers > 1 else None
    first_learned = next((n for n in names if n not in BASELINES), None)
    # the longest tasks first (learned models on btcv-demo), so that the workers end together
    tasks = [
        Task(
            label,
            str(data),
            split,
            m,
            str(out),
            threads,
            overlay=(label == "btcv-demo" and m == first_learned),
            limit_images=args.limit_images,
        )
        for label, data, split in datasets
        for m in sorted(names, key=lambda n: n in BASELINES)
    ]
    tasks.sort(key=lambda t: (t.label != "btcv-demo", t.model in BASELINES))
    print(
        f"{len(tasks)} tasks ({len(datasets)} datasets x {len(names)} models, protocols "
        f"{' and '.join(PROTOCOLS)}) on {args.workers} worker(s)",
        flush=True,
    )
    done = run_tasks(tasks, args.workers)

    from imis.bench.report import format_table, merge_runs

    runs: dict[str, dict[str, Any]] = {}
    for label, _, _ in datasets:
        for protocol in PROTOCOLS:
            runs[f"{label}/{protocol}"] = merge_parts(out / f"{label}-{protocol}", names)
    run_dirs = [out / key.replace("/", "-") for key in runs]
    board = leaderboard(runs)
    total = time.perf_counter() - t_start
    (out / "leaderboard.md").write_text(
        "# imis demo: leaderboard\n\n"
        + board
        + "\n## All runs (imis report)\n\n"
        + format_table(merge_runs(run_dirs))
        + f"\nmodels: {', '.join(names)}; seed 0; wall time {total:.0f} s\n"
    )
    overlay = next((r["overlay"] for r in done if r["overlay"]), None)
    results = {
        "models": names,
        "tasks": sorted(done, key=lambda r: r["task"]),
        "total_seconds": round(total, 1),
        "automask": automask,
        "runs": {key: {k: v for k, v in s.items() if k != "config"} for key, s in runs.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(board)
    print(f"reports (imis report's Markdown, CSV, figures): {', '.join(str(d) for d in run_dirs)}")
    print(f"wrote {out}/leaderboard.md, results.json" + (f", {Path(overlay).name}" if overlay else ""))
    print(f"demo wall time: {total:.0f} s")
    print(
        "interactive: `imis serve ../shared/data/btcv-demo/image` (or `.venv/bin/imis serve DATA_DIR`), "
        "then open http://127.0.0.1:8000/"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="imis demo", description=__doc__)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except ImisError as exc:
        print(f"imis demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
