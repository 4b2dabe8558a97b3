"""The written side of `imis stats`: the figures, the tables of ``report.md`` and the console summary,
from the statistics object that :func:`imis.data.stats.compute_stats` returns.

Output in REPORT_DIR: ``stats.json`` (every number), ``report.md`` (tables, figures linked) and PNG
figures ``fig2a_modalities.png``, ``fig2b_groups.png``, ``fig2c_resolution.png``, ``fig2d_coverage.png``,
``masks_per_image.png`` (matplotlib, Agg backend).

This module reads only the statistics object (a JSON-ready dict), never a dataset, so the counting
(:mod:`imis.data.stats`) and the presentation change apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from imis.io.files import atomic_output

__all__ = ["FIGURES", "print_summary", "write_report"]

#: File name of each figure in the report folder.
FIGURES = {
    "modalities": "fig2a_modalities.png",
    "groups": "fig2b_groups.png",
    "resolution": "fig2c_resolution.png",
    "coverage": "fig2d_coverage.png",
    "masks_per_image": "masks_per_image.png",
}


def _savefig(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def _figures(stats: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = {k: out / v for k, v in FIGURES.items()}
    gt_color, im_color, img_color = "#1f77b4", "#ff7f0e", "#7f7f7f"

    def bars(ax, labels, series, title, ylabel, log=False):
        x = np.arange(len(labels))
        width = 0.8 / max(len(series), 1)
        for i, (name, values, color) in enumerate(series):
            rects = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=color)
            ax.bar_label(rects, labels=[f"{v:,}" if v else "" for v in values], fontsize=7, padding=1)
        ax.set_xticks(
            x, labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center"
        )
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log and any(v for _, vals, _ in series for v in vals):
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8)

    def save(fig, key: str) -> None:
        _savefig(fig, paths[key])
        plt.close(fig)

    def bar_figure(key: str, figsize: tuple[float, float], *args, **kwargs) -> None:
        """A figure of one bar chart (``bars``' arguments after the axes), saved as ``FIGURES[key]``."""
        fig, ax = plt.subplots(figsize=figsize)
        bars(ax, *args, **kwargs)
        save(fig, key)

    # (a) images and masks per modality
    mods = stats["modalities"]
    labels = list(mods) or ["(none)"]
    bar_figure(
        "modalities",
        (max(5, 1.6 * len(labels) + 2), 4),
        labels,
        [
            ("images", [mods[m]["images"] for m in mods] or [0], img_color),
            ("GT masks", [mods[m]["gt_masks"] for m in mods] or [0], gt_color),
            ("imasks", [mods[m]["imask_masks"] for m in mods] or [0], im_color),
        ],
        "(a) Images and masks per modality",
        "count (log)",
        log=True,
    )

    # (b) targets per anatomical group
    groups = stats["groups"]
    glabels = list(groups)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, name, title, ylabel in (
        (axes[0], "n_targets", "targets", "(b) Targets per group", "distinct targets"),
        (axes[1], "gt_masks", "GT masks", "GT masks per group", "masks"),
    ):
        bars(ax, glabels, [(name, [groups[g][key] for g in glabels], gt_color)], title, ylabel)
    save(fig, "groups")

    # (c) resolution
    res = stats["resolution"]
    bar_figure(
        "resolution",
        (6, 4),
        [f"{b} px" for b in res["bins"]],
        [("images", res["counts"], img_color)],
        "(c) Image resolution (longer side)",
        "images",
    )

    # (d) coverage
    cov = stats["coverage"]
    bar_figure(
        "coverage",
        (9, 4),
        cov["bins"],
        [("GT masks", cov["gt"], gt_color), ("imasks", cov["imask"], im_color)],
        "(d) Mask coverage of the image",
        "masks",
    )

    # masks per image
    mpi = stats["masks_per_image"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, color, name in (("gt", gt_color, "GT masks"), ("imask", im_color, "imasks")):
        hist = {int(k): v for k, v in mpi[key]["histogram"].items()}
        if hist:
            ks = sorted(hist)
            ax.bar(
                ks,
                [hist[k] for k in ks],
                width=0.9,
                alpha=0.6,
                color=color,
                label=f"{name} (mean {mpi[key]['mean']:.1f})",
            )
    ax.set_title("Masks per image")
    ax.set_xlabel("masks in the image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    save(fig, "masks_per_image")
    return paths


def _md_table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _report_md(stats: dict[str, Any]) -> str:
    t = stats["totals"]
    out = ["# Dataset statistics", ""]
    out.append(
        f"{t['datasets']} dataset(s), {t['images']:,} images, {t['gt_masks']:,} ground-truth masks and "
        f"{t['imask_masks']:,} interactive masks ({t['masks_per_image']:.1f} masks per image)."
        + (f" {t['failures']} image(s) could not be read (listed at the end)." if t["failures"] else "")
    )
    out += ["", "## Datasets", ""]
    out.append(
        _md_table(
            [
                [
                    d["name"],
                    d["format"],
                    ", ".join(d["modalities"]),
                    d["images"],
                    ", ".join(f"{k} {v}" for k, v in d["splits"].items()),
                    d["gt_masks"],
                    d["imask_masks"],
                    d["failures"],
                ]  # fmt: skip
                for d in stats["datasets"]
            ],
            ["dataset", "format", "modality", "images", "splits", "GT masks", "imasks", "failures"],
        )
    )
    out += ["", "## (a) Images and masks per modality", "", f"![modalities]({FIGURES['modalities']})", ""]
    out.append(
        _md_table(
            [[m, v["images"], v["gt_masks"], v["imask_masks"]] for m, v in stats["modalities"].items()],
            ["modality", "images", "GT masks", "imasks"],
        )
    )
    out += ["", "### Masks per image", "", f"![masks per image]({FIGURES['masks_per_image']})", ""]
    mpi = stats["masks_per_image"]
    out.append(
        _md_table(
            [
                [k, v["images"], v["total"], v["mean"], v["median"], v["min"], v["max"]]
                for k, v in (("GT", mpi["gt"]), ("imask", mpi["imask"]), ("all", mpi["all"]))
            ],
            ["masks", "images", "masks", "mean", "median", "min", "max"],
        )
    )
    out += ["", "## (b) Targets per anatomical group", "", f"![groups]({FIGURES['groups']})", ""]
    out.append(
        _md_table(
            [
                [g, v["n_targets"], v["gt_masks"], v["images"], ", ".join(v["targets"])]
                for g, v in stats["groups"].items()
            ],
            ["group", "targets", "GT masks", "images", "target names"],
        )
    )
    if stats["unknown_names"]:
        names = ", ".join(f"`{k}` ({v})" for k, v in stats["unknown_names"].items())
        out += [
            "",
            f"Label names not in the vocabulary (group Unknown; add them with a vocabulary YAML): {names}.",
        ]
    res = stats["resolution"]
    out += ["", "## (c) Image resolution", "", f"![resolution]({FIGURES['resolution']})", ""]
    out.append(
        _md_table(
            [[b, c] for b, c in zip(res["bins"], res["counts"], strict=True)], ["longer side (px)", "images"]
        )
    )
    out += ["", f"Longer side in [256, 1024): {100 * res['share_256_to_1024']:.1f}% of the images. Sizes (W x H): "
            + ", ".join(f"{k} ({v})" for k, v in list(res["sizes"].items())[:12]) + "."]  # fmt: skip
    cov = stats["coverage"]
    out += ["", "## (d) Mask coverage", "", f"![coverage]({FIGURES['coverage']})", ""]
    out.append(
        _md_table(
            [[b, g, i] for b, g, i in zip(cov["bins"], cov["gt"], cov["imask"], strict=True)],
            ["coverage", "GT masks", "imasks"],
        )
    )
    out += [
        "",
        f"Masks below 2% of the image: GT {100 * cov['gt_share_below_2pct']:.1f}%, imasks {100 * cov['imask_share_below_2pct']:.1f}%.",
    ]
    if stats["failures"]:
        out += ["", "## Failures", ""]
        out.append(
            _md_table(
                [[f["dataset"], f["item"], f["error"]] for f in stats["failures"]],
                ["dataset", "item", "error"],
            )
        )
    out += ["", "Counting rules: " + "; ".join(f"{k}: {v}" for k, v in stats["counting"].items()) + ".", ""]
    return "\n".join(out)


def write_report(stats: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``stats.json``, ``report.md`` and the figures into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _figures(stats, out)
    paths["json"] = out / "stats.json"
    with atomic_output(paths["json"]) as tmp:
        tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["report"] = out / "report.md"
    with atomic_output(paths["report"]) as tmp:
        tmp.write_text(_report_md(stats), encoding="utf-8")
    return paths


def print_summary(stats: dict[str, Any], paths: dict[str, Path], stream: TextIO) -> None:
    """One table row per dataset and a total, the targets per group and where the report is."""
    rows = [
        [
            d["name"],
            d["format"],
            d["images"],
            d["gt_masks"],
            d["imask_masks"],
            f"{(d['gt_masks'] + d['imask_masks']) / d['images']:.1f}" if d["images"] else "-",
            d["failures"],
        ]  # fmt: skip
        for d in stats["datasets"]
    ]
    t = stats["totals"]
    rows.append(
        [
            "total",
            "",
            t["images"],
            t["gt_masks"],
            t["imask_masks"],
            f"{t['masks_per_image']:.1f}",
            t["failures"],
        ]
    )
    header = ["dataset", "format", "images", "GT masks", "imasks", "masks/img", "failures"]
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), file=stream)
    groups = ", ".join(f"{g} {v['n_targets']}" for g, v in stats["groups"].items() if v["n_targets"])
    print(f"targets per group: {groups or '-'}", file=stream)
    print(f"report: {paths['report']}  (stats.json and {len(FIGURES)} figures beside it)", file=stream)
