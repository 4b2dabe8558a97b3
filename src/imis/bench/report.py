"""Aggregation and reports of a benchmark run directory (see :mod:`imis.bench.runner` for the rows).

Two averages of every metric are given, as they differ on small targets:

* mask level: the mean over all (image, target) masks;
* image level (the IMIS paper's "Image Avg Dice"): the mean over each image's masks, then over images.

``summary.json`` holds, per model and prompt kind (``iterative@k`` for interaction k, ``paper:<mode>@k``
for round k of the imis-paper protocol, ``box+<px>`` per box offset, ``click@<bin>`` per click-distance
bin): both averages, the counts, and breakdowns per target, anatomical group and dataset; NoC@85/90 and
failures for the iterative protocol; skipped kinds and errors with their reasons. ``results.csv`` is the
flat table, ``leaderboard.md`` the models x prompt kinds table, ``figures/`` the bar and curve plots.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imis.bench.protocols import CLICK_BINS, PAPER_KINDS, SINGLE_KINDS
from imis.bench.records import read_rows
from imis.errors import InputError

__all__ = ["aggregate", "format_table", "merge_runs", "write_report"]

METRICS = ("dice", "iou", "nsd", "hd95")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _levels(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_masks": len(rows), "n_images": len({r["image"] for r in rows})}
    for m in METRICS:
        out[f"{m}_mask"] = _mean(r.get(m) for r in rows)
        per_image: dict[str, list] = defaultdict(list)
        for r in rows:
            per_image[r["image"]].append(r.get(m))
        out[f"{m}_image"] = _mean(_mean(v) for v in per_image.values())
    out["hd95_infinite"] = sum(1 for r in rows if r.get("hd95") is None)
    out["seconds_mean"] = _mean(r.get("seconds") for r in rows)
    return out


def _kind_label(row: dict[str, Any]) -> str:
    return f"{row['kind']}@{row['k']}" if _is_sequence(row["kind"]) else row["kind"]


def _is_sequence(kind: str) -> bool:
    """Kinds scored after each interaction: iterative and the imis-paper modes (labelled ``kind@k``)."""
    return kind == "iterative" or kind in PAPER_KINDS


def _curves(kinds: Iterable[str]) -> dict[str, list[int]]:
    """``{sequence kind: sorted interactions}`` of labels such as ``iterative@3`` or ``paper:box@2``."""
    out: dict[str, list[int]] = defaultdict(list)
    for k in kinds:
        base, sep, n = k.rpartition("@")
        if sep and _is_sequence(base) and n.isdigit():
            out[base].append(int(n))
    return {b: sorted(v) for b, v in out.items()}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary object of a list of prediction rows."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("kind") not in ("noc",)]
    results: dict[str, dict[str, Any]] = defaultdict(dict)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in ok:
        groups[(r["model"], _kind_label(r))].append(r)
    for (model, kind), rs in sorted(groups.items()):
        entry = _levels(rs)
        for by in ("target", "group", "dataset"):
            parts: dict[str, list] = defaultdict(list)
            for r in rs:
                parts[str(r.get(by))].append(r)
            entry[f"by_{by}"] = {
                k: {
                    "dice_mask": _mean(x["dice"] for x in v),
                    "dice_image": _levels(v)["dice_image"],
                    "n_masks": len(v),
                }
                for k, v in sorted(parts.items())
            }
        results[model][kind] = entry
    noc: dict[str, Any] = {}
    noc_rows: dict[str, list] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "noc" and r.get("status") == "ok":
            noc_rows[r["model"]].append(r)
    for model, rs in sorted(noc_rows.items()):
        noc[model] = {
            "n_masks": len(rs),
            "noc85": _mean(r["noc85"] for r in rs),
            "noc90": _mean(r["noc90"] for r in rs),
            "failures85": sum(bool(r["failed85"]) for r in rs),
            "failures90": sum(bool(r["failed90"]) for r in rs),
        }
    skipped: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("status") == "skipped":
            skipped[f"{r['model']} | {r['kind']} | {r.get('reason')}"] += 1
    errors = [
        {k: r.get(k) for k in ("model", "image", "target", "kind", "k", "reason")}
        for r in rows
        if r.get("status") == "error"
    ]
    return {
        "results": {m: dict(v) for m, v in sorted(results.items())},
        "noc": noc,
        "skipped": dict(sorted(skipped.items())),
        "errors": errors,
    }


def _kind_order(kinds: Iterable[str]) -> list[str]:
    def key(k: str) -> tuple:
        base, _, n = k.rpartition("@")
        if base == "iterative" and n.isdigit():
            return (3, int(n), "")
        if base in PAPER_KINDS and n.isdigit():  # imis-paper: by first-prompt mode, then round
            return (4, list(PAPER_KINDS).index(base) * 1000 + int(n), "")
        if k.startswith("box+") and k[4:].isdigit():  # box-offset protocol, by offset
            return (1, int(k[4:]), "")
        if k.startswith("click@"):  # click-position protocol, by distance bin
            b = k[len("click@") :]
            return (2, CLICK_BINS.index(b) if b in CLICK_BINS else 99, b)
        return (0, list(SINGLE_KINDS).index(k) if k in SINGLE_KINDS else 99, k)

    return sorted(set(kinds), key=key)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _leaderboard(summary: dict[str, Any]) -> str:
    res = summary["results"]
    kinds = _kind_order(k for m in res.values() for k in m)
    lines = [
        "# Leaderboard",
        "",
        "Dice: mask-level mean / image-level mean (the paper's Image Avg Dice).",
        "",
    ]
    perturb = summary.get("config", {}).get("perturb")
    if perturb:
        lines += [f"Images perturbed before the models saw them: `--perturb {perturb}`.", ""]
    lines.append("| model | " + " | ".join(kinds) + " |")
    lines.append("|---|" + "---|" * len(kinds))
    for model, per in res.items():
        cells = [
            f"{_fmt(per[k]['dice_mask'])} / {_fmt(per[k]['dice_image'])}" if k in per else "skipped"
            for k in kinds
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if summary["noc"]:
        lines += [
            "",
            "| model | NoC@85 | NoC@90 | failures@85 | failures@90 | masks |",
            "|---|---|---|---|---|---|",
        ]
        for model, n in summary["noc"].items():
            lines.append(
                f"| {model} | {_fmt(n['noc85'])} | {_fmt(n['noc90'])} | {n['failures85']} | "
                f"{n['failures90']} | {n['n_masks']} |"
            )
    if summary["skipped"]:
        lines += ["", "Skipped (not scored):", ""] + [f"- {k}: {v}" for k, v in summary["skipped"].items()]
    if summary["errors"]:
        lines += ["", "Errors (not scored):", ""]
        lines += [
            f"- {e['model']} {e['image']} {e['target'] or ''} {e['kind']}: {e['reason']}"
            for e in summary["errors"]
        ]
    return "\n".join(lines) + "\n"


def _csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for model, per in summary["results"].items():
        for kind in _kind_order(per):
            e = per[kind]
            out.append(
                {"model": model, "kind": kind, "level": "all", "name": "all", "n_masks": e["n_masks"]}
                | {f"{m}_mask": e[f"{m}_mask"] for m in METRICS}
                | {f"{m}_image": e[f"{m}_image"] for m in METRICS}
            )
            for by in ("target", "group", "dataset"):
                for name, v in e[f"by_{by}"].items():
                    out.append(
                        {"model": model, "kind": kind, "level": by, "name": name, "n_masks": v["n_masks"]}
                        | {"dice_mask": v["dice_mask"], "dice_image": v["dice_image"]}
                    )
    return out


def _save_dice_figure(plt: Any, fig: Any, ax: Any, path: Path, legend: bool) -> Path:
    """Finish a Dice figure as every report figure is (y from 0 to 1, 100 dpi), write it, free it."""
    ax.set_ylim(0, 1)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _figures(summary: dict[str, Any], fig_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    res = summary["results"]
    models = list(res)
    written = []
    all_kinds = _kind_order(k for m in res.values() for k in m)
    curves = _curves(all_kinds)
    single = [k for k in all_kinds if not _is_sequence(k.rpartition("@")[0])]
    if single:  # Fig. 5: bars per model and prompt kind
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(single) * max(1, len(models))), 4))
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            vals = [res[model].get(k, {}).get("dice_mask") or 0.0 for k in single]
            ax.bar(np.arange(len(single)) + i * width, vals, width, label=model)
        ax.set_xticks(np.arange(len(single)) + 0.4 - width / 2, single)
        ax.set_ylabel("Dice (mask level)")
        written.append(_save_dice_figure(plt, fig, ax, fig_dir / "dice_by_prompt.png", legend=True))
    if curves:  # Fig. 6: Dice vs interactions (image level for imis-paper, as the paper reports it)
        fig, ax = plt.subplots(figsize=(6, 4))
        level = "dice_mask" if list(curves) == ["iterative"] else "dice_image"
        for model in models:
            for base, ks in _curves(res[model]).items():
                label = model if list(curves) == ["iterative"] else f"{model} {base}"
                ax.plot(ks, [res[model][f"{base}@{k}"][level] for k in ks], marker="o", label=label)
        ax.set_xlabel("interactions")
        ax.set_ylabel("Dice (mask level)" if level == "dice_mask" else "Dice (image level)")
        written.append(_save_dice_figure(plt, fig, ax, fig_dir / "dice_vs_interactions.png", legend=True))
    # per anatomical group: the box kind (single) or the last interaction (iterative)
    for model in models:
        seq = _curves(res[model])
        kinds = [k for k in ("box", "click") if k in res[model]] or [
            f"{b}@{ks[-1]}" for b, ks in seq.items()
        ][:1]
        if not kinds:
            continue
        by = res[model][kinds[0]]["by_group"]
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(by)), 4))
        ax.bar(list(by), [v["dice_mask"] or 0.0 for v in by.values()])
        ax.set_title(f"{model}, {kinds[0]}: Dice per anatomical group")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
        written.append(_save_dice_figure(plt, fig, ax, fig_dir / f"dice_by_group_{safe}.png", legend=False))
    return written


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Aggregate ``run_dir/predictions.jsonl`` and write summary.json, results.csv, leaderboard.md and
    figures/. Returns the summary."""
    run = Path(run_dir)
    pred = run / "predictions.jsonl"
    if not pred.is_file():
        raise InputError(f"{run}: no predictions.jsonl (not a benchmark run directory)")
    summary = aggregate(read_rows(pred))
    cfg = run / "config.json"
    if cfg.is_file():
        summary["config"] = json.loads(cfg.read_text())
    (run / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    rows = _csv_rows(summary)
    fields = ["model", "kind", "level", "name", "n_masks"] + [
        f"{m}_{lv}" for m in METRICS for lv in ("mask", "image")
    ]
    with (run / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    (run / "leaderboard.md").write_text(_leaderboard(summary))
    _figures(summary, run / "figures")
    return summary


def merge_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per (run, model, prompt kind): dataset, protocol, masks, mask- and image-level Dice."""
    table = []
    for d in run_dirs:
        run = Path(d)
        pred = run / "predictions.jsonl"
        if not pred.is_file():
            raise InputError(f"{run}: no predictions.jsonl (not a benchmark run directory)")
        cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
        summary = aggregate(read_rows(pred))
        for model, per in summary["results"].items():
            for kind in _kind_order(per):
                e = per[kind]
                table.append(
                    {
                        "run": run.name,
                        "dataset": ",".join(sorted(e["by_dataset"])),
                        "protocol": cfg.get("protocol", "?")
                        + (f" ({cfg['perturb']})" if cfg.get("perturb") else ""),
                        "model": model,
                        "kind": kind,
                        "n_masks": e["n_masks"],
                        "dice_mask": e["dice_mask"],
                        "dice_image": e["dice_image"],
                    }
                )
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`merge_runs` rows (or any list of flat dicts)."""
    if not table:
        return "(no results)\n"
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append(
            "| "
            + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in (r[c] for c in cols))
            + " |"
        )
    return "\n".join(lines) + "\n"
