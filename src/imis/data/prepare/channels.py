"""A label slice -> its one-hot channels after the mask filters, and the IMed-361M files of a kept slice
(written from a channel map, byte-identical to :func:`imis.data.formats.imed.write_sample`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imis.data.prepare.config import PrepareConfig
from imis.data.prepare.filters import large_enough, split_components
from imis.data.prepare.layout import Layout


@dataclass(frozen=True)
class ChannelPlan:
    """The layout's groups split for speed: single-value unsplit groups are handled as arrays."""

    values: np.ndarray  # source value of each simple group
    channels: np.ndarray  # its channel
    others: tuple  # multi-value or component-split groups (Layout.Group)
    restack: np.ndarray  # source value recorded for each channel

    @classmethod
    def of(cls, layout: Layout) -> ChannelPlan:
        groups = layout.groups
        simple = [g for g in groups if not g.split and len(g.values) == 1]
        return cls(
            values=np.array([g.values[0] for g in simple], dtype=np.int64),
            channels=np.array([g.channels[0] for g in simple], dtype=np.int64),
            others=tuple(g for g in groups if g.split or len(g.values) != 1),
            restack=layout.restack_values(),
        )


def slice_channels(
    lab: np.ndarray, plan: ChannelPlan, lut: np.ndarray, config: PrepareConfig, min_frac, counts_out: dict
) -> tuple[np.ndarray | None, list[dict]]:
    """The channel map of a label slice after the mask filters (-1 = no mask), and the mask records.

    Masks of one label map never overlap, so one ``(H, W)`` map of channel ids holds every one-hot
    channel; :func:`_csr_arrays` turns it into the CSR matrix without a dense ``(C, H, W)`` array.
    """
    h, w = lab.shape
    total = h * w
    counts = np.bincount(lab.ravel(), minlength=lut.size)
    lut.fill(-1)
    px = counts[plan.values]
    present = px > 0
    ok = large_enough(px, total, min_frac)
    counts_out["masks_excluded_small"] += int(np.count_nonzero(present & ~ok))
    lut[plan.values[ok]] = plan.channels[ok]
    kept: list[tuple[int, int, int | None]] = [
        (int(c), int(n), None) for c, n in zip(plan.channels[ok], px[ok], strict=True)
    ]  # (channel, pixels, component)
    splits: list[tuple[int, np.ndarray]] = []
    for g in plan.others:
        n_px = int(counts[list(g.values)].sum())
        if n_px == 0:
            continue
        if not g.split:
            if not large_enough(n_px, total, min_frac):
                counts_out["masks_excluded_small"] += 1
                continue
            lut[list(g.values)] = g.channels[0]
            kept.append((g.channels[0], n_px, None))
            continue
        union = lab == g.values[0] if len(g.values) == 1 else np.isin(lab, g.values)
        comps = split_components(union, config.connectivity)
        sizes = [int(c.sum()) for c in comps]
        good = [(c, n) for c, n in zip(comps, sizes, strict=True) if large_enough(n, total, min_frac)]
        counts_out["masks_excluded_small"] += len(comps) - len(good)
        if len(good) > len(g.channels):
            counts_out["masks_excluded_component_limit"] += len(good) - len(g.channels)
            good = good[: len(g.channels)]
        if len(comps) > 1:
            counts_out["labels_split"] += 1
        for rank, (c, n) in enumerate(good):
            splits.append((g.channels[rank], c))
            kept.append((g.channels[rank], n, rank + 1))
    if not kept:
        return None, []
    chmap = lut[lab]
    for ch, comp in splits:
        chmap[comp] = ch
    records = []
    for ch, n, comp in sorted(kept):
        rec = {"label": ch + 1, "value": int(plan.restack[ch]), "pixels": n}
        if comp is not None:
            rec["component"] = comp
        records.append(rec)
    return chmap, records


def _csr_arrays(chmap: np.ndarray, n_channels: int) -> list[tuple[str, np.ndarray]]:
    """``scipy.sparse.save_npz``'s arrays of the one-hot CSR matrix ``(C, H*W)`` of a channel map.

    The same arrays (dtypes, order, sorted indices) as :func:`imis.data.formats.imed.write_sample`
    computes from a dense ``(C, H, W)`` stack, so the files are byte-identical; one stable sort of the
    channel ids instead of a scan of ``C * H * W`` booleans (about 30x faster for 100+ labels).
    """
    flat = chmap.ravel()
    order = np.argsort(flat, kind="stable")  # pixels grouped by channel, ascending within each
    n_bg = int(np.count_nonzero(flat < 0))
    indices = order[n_bg:].astype(np.int32)
    per_channel = (
        np.bincount(flat[order[n_bg:]], minlength=n_channels) if indices.size else np.zeros(n_channels, int)
    )
    indptr = np.zeros(n_channels + 1, dtype=np.int32)
    np.cumsum(per_channel, out=indptr[1:])
    return [
        ("indices", indices),
        ("indptr", indptr),
        ("format", np.asarray(b"csr")),
        ("shape", np.asarray((n_channels, flat.size), dtype=np.int64)),
        ("data", np.ones(indices.size, dtype=np.int32)),
    ]


def write_slice(
    root: Path, stem: str, image: np.ndarray, chmap: np.ndarray, n_channels: int
) -> dict[str, str]:
    """Write one image and its one-hot masks (given as a channel map) in the IMed-361M layout.

    Produces the same files, byte for byte, and the same entry as
    ``imed.write_sample(root, stem, image, masks)`` with ``masks[c] = chmap == c``, through the IMed
    module's own writers (:func:`~imis.data.formats.imed.write_png`, ``write_npz``, ``label_filename``).
    """
    from imis.data.formats import imed

    h, w = chmap.shape
    entry = {"image": f"image/{stem}.png", "label": f"label/{imed.label_filename(stem, n_channels, h, w)}"}
    imed.write_png(root / entry["image"], image)
    imed.write_npz(root / entry["label"], _csr_arrays(chmap, n_channels))
    return entry
