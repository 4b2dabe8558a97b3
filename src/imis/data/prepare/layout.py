"""The dataset's channel layout: which source label values go into which one-hot channel, under which name.

IMed-361M stores one channel per dataset label (channel ``c`` = ``dataset.json`` label ``c + 1``), the
same for every image, empty channels included. The layout is fixed before any case is processed, from
the source's label names:

* each source label value (background 0 and ``ignore_labels`` left out) is resolved with the target
  vocabulary (:class:`imis.data.vocabulary.Vocabulary`); its :attr:`Target.key` (``kidney_left``,
  ``thalamus_right``) becomes the dataset label name, so that laterality stays in the key while the
  target's canonical name (``kidney``) and anatomical group travel in ``dataset.json``'s ``imis`` block;
* source values whose names resolve to the same key (synonyms within one source, e.g. ``pulmonary
  nodule`` and ``lung nodule``) share one channel;
* a label configured in ``split_components`` gets ``max_components`` channels ``<key>_1`` ...
  ``<key>_K`` (component 1 is the largest in each slice);
* channels are ordered by their smallest source value, components in rank order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from imis.data.prepare.config import PrepareConfig
from imis.errors import InputError

__all__ = ["Channel", "Group", "Layout", "build_layout"]


@dataclass(frozen=True)
class Channel:
    """One one-hot channel (dataset label ``index + 1``)."""

    key: str  # dataset.json label name
    name: str  # canonical target name (laterality merged)
    display: str
    group: str
    laterality: str | None
    values: tuple[int, ...]  # source label values painted into this channel
    raw_names: tuple[str, ...]
    component: int | None = None  # 1-based rank for split labels

    def to_json(self) -> dict:
        out = asdict(self)
        out["values"] = list(self.values)
        out["raw_names"] = list(self.raw_names)
        return out


@dataclass(frozen=True)
class Group:
    """The source values and channels of one target: one channel, or K for component splitting."""

    values: tuple[int, ...]
    channels: tuple[int, ...]
    split: bool


@dataclass(frozen=True)
class Layout:
    channels: tuple[Channel, ...]

    @property
    def groups(self) -> list[Group]:
        out: dict[tuple[int, ...], list[int]] = {}
        for i, ch in enumerate(self.channels):
            out.setdefault(ch.values, []).append(i)
        return [Group(v, tuple(idx), self.channels[idx[0]].component is not None) for v, idx in out.items()]

    @property
    def values(self) -> set[int]:
        return {v for ch in self.channels for v in ch.values}

    def labels(self) -> dict[int, str]:
        """``dataset.json`` labels: ``{0: "background", 1: key, ...}``."""
        return {0: "background", **{i + 1: ch.key for i, ch in enumerate(self.channels)}}

    def restack_values(self) -> np.ndarray:
        """Source label value painted for each channel on restacking (the smallest of its values)."""
        return np.array([min(ch.values) for ch in self.channels], dtype=np.int64)

    def to_json(self) -> list[dict]:
        return [ch.to_json() for ch in self.channels]

    @classmethod
    def from_json(cls, data: list[dict]) -> Layout:
        return cls(
            tuple(
                Channel(
                    key=d["key"],
                    name=d["name"],
                    display=d["display"],
                    group=d["group"],
                    laterality=d.get("laterality"),
                    values=tuple(int(v) for v in d["values"]),
                    raw_names=tuple(d.get("raw_names", ())),
                    component=d.get("component"),
                )
                for d in data
            )
        )


def build_layout(labels: dict[int, str], config: PrepareConfig, vocabulary) -> Layout:
    """The channel layout for source ``labels`` (value -> raw name), see the module documentation."""
    split_targets = _resolve_names(config.split_components, vocabulary)
    ignored_targets = _resolve_names(config.ignore_labels, vocabulary)
    merged: dict[str, dict] = {}
    for value in sorted(labels):
        raw = labels[value]
        if value == 0 or config.ignores(value, raw):
            continue
        target = vocabulary.resolve(raw)
        if target.is_background:
            continue
        key = target.key or f"label_{value}"
        if config.ignores(value, target.name, key) or _named(target, key, ignored_targets):
            continue
        if config.keep_labels and not config.keeps(value, raw, target.name, target.display, key):
            continue
        entry = merged.setdefault(key, {"target": target, "values": [], "raw": []})
        entry["values"].append(int(value))
        entry["raw"].append(raw)
    _check_kept(config, labels, merged)
    channels: list[Channel] = []
    for key, entry in sorted(merged.items(), key=lambda kv: min(kv[1]["values"])):
        t = entry["target"]
        common = dict(
            name=t.name,
            display=t.display,
            group=t.group,
            laterality=t.laterality,
            values=tuple(entry["values"]),
            raw_names=tuple(entry["raw"]),
        )
        if config.splits_components(key, t.name, t.display, *entry["raw"]) or _named(t, key, split_targets):
            for k in range(1, config.max_components + 1):
                channels.append(Channel(key=f"{key}_{k}", component=k, **common))
        else:
            channels.append(Channel(key=key, **common))
    return Layout(tuple(channels))


def _check_kept(config: PrepareConfig, labels: dict[int, str], merged: dict[str, dict]) -> None:
    """Every ``keep_labels`` entry must name a label of the source (a typo would keep nothing of it)."""
    from imis.names import did_you_mean

    for want in config.keep_labels:
        one = PrepareConfig(keep_labels=(want,))
        if not any(
            one.keeps(v, raw, e["target"].name, e["target"].display, k)
            for k, e in merged.items()
            for v, raw in zip(e["values"], e["raw"], strict=True)
        ):
            raise InputError(
                f"keep_labels: {want!r} is not a label value or name of the source"
                f"{did_you_mean(str(want), labels.values())}"
            )


def _resolve_names(names, vocabulary) -> set[tuple[str, str | None]]:
    """Configured label names as (canonical target name, laterality) through the vocabulary (synonyms)."""
    if not names or names is True:
        return set()
    out = set()
    for n in names:
        if str(n).isdigit():
            continue
        t = vocabulary.resolve(str(n))
        if not t.is_background and t.name:
            out.add((t.name, t.laterality))
    return out


def _named(target, key: str, wanted: set[tuple[str, str | None]]) -> bool:
    """A configured name without laterality matches both sides; one with laterality only that side."""
    return (target.name, None) in wanted or (target.name, target.laterality) in wanted
