"""The settings of `imis prepare`, read from a YAML file (``--config prepare.yaml``).

Every key is optional; an unknown key, a wrong type or an out-of-range value is an
:class:`imis.errors.InputError` naming the file, the key and what is allowed. The defaults are the
IMed-361M protocol (paper §3.1, SPEC.md "prepare")::

    name: null                # dataset.json "name" (default: the --out folder name)
    description: null         # dataset.json "description" (default: "<modality>_<name>")
    modality: null            # ct, mr, pet, ... (default: the source's dataset.json channel name)
    channels: [0]             # input channels (_0000, _0001, ...) to prepare; each becomes its own images
    axes: [z, y, x]           # slicing axes of (z, y, x) volume arrays
    slice_step: 1             # keep every Nth slice along each axis (indices centred: the first kept
                              # index is ((n - 1) % N) // 2 for an axis of n slices)
    ct_window: soft_tissue    # soft_tissue W400/L40 | lung W1500/L-600 | bone W2500/L480 | brain W80/L40
                              # | liver W150/L90 | percentile | {width: W, level: L}
    percentiles: [0.5, 99.5]  # clipping range for MR and other modalities (and ct_window: percentile)
    rgb: true                 # write grey slices as 3 equal channels, as IMed-361M releases them
    max_aspect_ratio: 1.5     # slices with max(H, W) / min(H, W) above this are excluded (1.5 is kept)
    min_mask_fraction: 0.001  # masks with foreground below this fraction of the pixels are excluded
    split_components: []      # label names (source or target) whose connected components become
                              # separate masks; `true` for every label
    max_components: 8         # channels per split label; smaller components beyond that are dropped
    connectivity: 8           # 4 or 8: pixel neighbourhood of a connected component
    labels: {}                # source label value -> name, overriding the source's dataset.json
    ignore_labels: []         # source label values (or names) to leave out
    keep_labels: []           # only these label values (or names): every other value is background,
                              # e.g. 4 of an atlas's 116 labels without listing the other 112
    unnamed_labels: error     # a label value that no name covers: error | ignore (background)
    vocabulary: null          # YAML file extending the built-in target vocabulary
    test_fraction: 0.1        # share of the cases in the test split (case level); 0: every case in
                              # training, 1: every case in the test split (a single case too)
    max_test_images: 3000     # at most this many test images per dataset
    seed: 0                   # seed of the case-level split
    leakage_datasets: []      # other prepared/IMed datasets: their images are kept out of our test split
    empty_labels: error       # a case whose label map holds no foreground: error | skip
    drop_duplicate_slices: false  # leave out a slice whose image and masks equal those of a slice already
                              # kept from the same case (e.g. mirror slices of a symmetric template)
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imis.errors import InputError

__all__ = ["CT_WINDOWS", "PrepareConfig", "load_config", "unnamed_values_error"]

#: CT window presets: name -> (width, level) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (2500.0, 480.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 90.0),
}
_AXES = ("z", "y", "x")


@dataclass(frozen=True)
class PrepareConfig:
    """Validated settings of one `imis prepare` run (see the module docstring for each key)."""

    name: str | None = None
    description: str | None = None
    modality: str | None = None
    channels: tuple[int, ...] = (0,)
    axes: tuple[str, ...] = _AXES
    slice_step: int = 1
    ct_window: str | tuple[float, float] = "soft_tissue"
    percentiles: tuple[float, float] = (0.5, 99.5)
    rgb: bool = True
    max_aspect_ratio: float = 1.5
    min_mask_fraction: float = 0.001
    split_components: bool | tuple[str, ...] = ()
    max_components: int = 8
    connectivity: int = 8
    labels: dict[int, str] = field(default_factory=dict)
    ignore_labels: tuple[str, ...] = ()
    keep_labels: tuple[str, ...] = ()
    unnamed_labels: str = "error"
    vocabulary: str | None = None
    test_fraction: float = 0.1
    max_test_images: int = 3000
    seed: int = 0
    leakage_datasets: tuple[str, ...] = ()
    empty_labels: str = "error"
    drop_duplicate_slices: bool = False

    def __post_init__(self) -> None:
        _validate(self, "configuration")

    # -- derived ------------------------------------------------------------------------------------
    def window_for(self, modality: str) -> tuple[str, float, float] | None:
        """``(name, width, level)`` of the CT window for ``modality``, or None for percentile scaling."""
        if modality.lower() != "ct" or self.ct_window == "percentile":
            return None
        if isinstance(self.ct_window, tuple):
            width, level = self.ct_window
            return ("custom", width, level)
        width, level = CT_WINDOWS[self.ct_window]
        return (self.ct_window, width, level)

    def splits_components(self, *names: str) -> bool:
        """Whether a label known under any of ``names`` is split into connected components."""
        if self.split_components is True:
            return True
        if not self.split_components:
            return False
        wanted = {_norm(n) for n in self.split_components}
        return any(_norm(n) in wanted for n in names if n)

    def ignores(self, value: int, *names: str) -> bool:
        """Whether label ``value`` (known under ``names``) is in ``ignore_labels``; a value asked about
        without a name is one no name covers: left out with ``unnamed_labels: ignore`` or ``keep_labels``
        (which :func:`imis.data.prepare.layout.build_layout` applies to the named values)."""
        wanted = {_norm(n) for n in self.ignore_labels}
        if str(value) in wanted or any(_norm(n) in wanted for n in names if n):
            return True
        return not names and (self.unnamed_labels == "ignore" or bool(self.keep_labels))

    def keeps(self, value: int, *names: str) -> bool:
        """Whether ``keep_labels`` names label ``value`` (by value or any of ``names``)."""
        keep = {_norm(n) for n in self.keep_labels}
        return str(value) in keep or any(_norm(n) in keep for n in names if n)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists, label keys as strings), stable for fingerprints; the
        label filters at their defaults are left out (datasets prepared before they existed resume)."""
        out = asdict(self)
        if not self.keep_labels:
            out.pop("keep_labels")
        if self.unnamed_labels == "error":
            out.pop("unnamed_labels")
        out["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        return json.loads(json.dumps(out))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "configuration") -> PrepareConfig:
        if not isinstance(data, dict):
            raise InputError(f"{source}: must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InputError(
                    f"{source}: unknown key {key!r}{hint}; valid keys: {', '.join(sorted(known))}"
                )
        kwargs = {k: _coerce(k, v, source) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except InputError as exc:
            raise InputError(str(exc).replace("configuration:", f"{source}:", 1)) from None


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def _coerce(key: str, value: Any, source: str) -> Any:
    """YAML values to the dataclass's types (lists -> tuples, etc.); type errors name the key."""

    def bad(expect: str) -> InputError:
        return InputError(f"{source}: {key!r} must be {expect}, got {value!r}")

    if key in ("name", "description", "modality", "vocabulary"):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        return value.strip()
    if key in ("axes",):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise bad("a list of axes from z, y, x")
        return tuple(str(a).strip().lower() for a in items)
    if key == "channels":
        items = [value] if isinstance(value, int) else value
        if not isinstance(items, list) or not items or not all(_is_int(v) for v in items):
            raise bad("a list of channel numbers, e.g. [0]")
        return tuple(int(v) for v in items)
    if key == "ct_window":
        if isinstance(value, str):
            return value.strip().lower().replace(" ", "_").replace("-", "_")
        if isinstance(value, dict):
            extra = set(value) - {"width", "level"}
            if extra or not {"width", "level"} <= set(value):
                raise bad("a preset name or {width: W, level: L}")
            try:
                return (float(value["width"]), float(value["level"]))
            except (TypeError, ValueError):
                raise bad("a preset name or {width: W, level: L} with numbers") from None
        raise bad(f"one of {', '.join([*CT_WINDOWS, 'percentile'])} or {{width: W, level: L}}")
    if key == "percentiles":
        if not isinstance(value, list) or len(value) != 2 or not all(_is_num(v) for v in value):
            raise bad("two numbers [low, high], e.g. [0.5, 99.5]")
        return (float(value[0]), float(value[1]))
    if key in ("rgb", "drop_duplicate_slices"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key in ("max_aspect_ratio", "min_mask_fraction", "test_fraction"):
        if not _is_num(value):
            raise bad("a number")
        return float(value)
    if key in ("max_components", "connectivity", "max_test_images", "seed", "slice_step"):
        if not _is_int(value):
            raise bad("an integer")
        return int(value)
    if key == "split_components":
        if value is True:
            return True
        if value is None or value is False:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise bad("true, false or a list of label names")
        return tuple(str(v) for v in items)
    if key in ("ignore_labels", "keep_labels"):
        items = [] if value is None else ([value] if isinstance(value, (str, int)) else value)
        if not isinstance(items, list):
            raise bad("a list of label values or names")
        return tuple(str(v) for v in items)
    if key == "labels":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad("a mapping of label value -> name, e.g. {1: liver}")
        out = {}
        for k, v in value.items():
            if not _is_int(k) and not (isinstance(k, str) and k.strip().isdigit()):
                raise bad("a mapping with integer label values as keys")
            if not isinstance(v, str) or not v.strip():
                raise bad("a mapping with non-empty names as values")
            out[int(k)] = v.strip()
        return out
    if key == "leakage_datasets":
        items = [] if value is None else ([value] if isinstance(value, str) else value)
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a list of dataset folders")
        return tuple(items)
    if key in ("empty_labels", "unnamed_labels"):
        return str(value).strip().lower()
    return value  # pragma: no cover - every field is handled above


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate(c: PrepareConfig, source: str) -> None:
    def bad(key: str, msg: str) -> InputError:
        return InputError(f"{source}: {key!r} {msg}")

    if not c.axes or any(a not in _AXES for a in c.axes) or len(set(c.axes)) != len(c.axes):
        raise bad("axes", f"must be distinct axes from z, y, x, got {list(c.axes)}")
    if not c.channels or any(ch < 0 for ch in c.channels) or len(set(c.channels)) != len(c.channels):
        raise bad("channels", f"must be distinct channel numbers >= 0, got {list(c.channels)}")
    if isinstance(c.ct_window, str):
        if c.ct_window not in CT_WINDOWS and c.ct_window != "percentile":
            raise bad(
                "ct_window",
                f"{c.ct_window!r} is not one of {', '.join([*CT_WINDOWS, 'percentile'])} "
                "or {width: W, level: L}",
            )
    elif not (c.ct_window[0] > 0):
        raise bad("ct_window", f"width must be > 0, got {c.ct_window[0]}")
    lo, hi = c.percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise bad("percentiles", f"must satisfy 0 <= low < high <= 100, got [{lo}, {hi}]")
    if not c.max_aspect_ratio >= 1.0:
        raise bad("max_aspect_ratio", f"must be >= 1, got {c.max_aspect_ratio}")
    if not 0.0 <= c.min_mask_fraction < 1.0:
        raise bad("min_mask_fraction", f"must be in [0, 1), got {c.min_mask_fraction}")
    if c.max_components < 1:
        raise bad("max_components", f"must be >= 1, got {c.max_components}")
    if c.connectivity not in (4, 8):
        raise bad("connectivity", f"must be 4 or 8, got {c.connectivity}")
    if not _is_int(c.slice_step) or c.slice_step < 1:
        raise bad("slice_step", f"must be a whole number >= 1 (1 keeps every slice), got {c.slice_step!r}")
    if not 0.0 <= c.test_fraction <= 1.0:
        raise bad("test_fraction", f"must be in [0, 1], got {c.test_fraction}")
    if c.max_test_images < 0:
        raise bad("max_test_images", f"must be >= 0, got {c.max_test_images}")
    if c.unnamed_labels not in ("error", "ignore"):
        raise bad("unnamed_labels", f"must be 'error' or 'ignore', got {c.unnamed_labels!r}")
    if c.keep_labels and c.ignore_labels:
        raise bad("keep_labels", "and 'ignore_labels' exclude each other: give one of them")
    if c.empty_labels not in ("error", "skip"):
        raise bad("empty_labels", f"must be 'error' or 'skip', got {c.empty_labels!r}")
    if any(k < 1 for k in c.labels):
        raise bad("labels", "values must be >= 1 (0 is the background)")


def load_config(path: str | os.PathLike | None) -> PrepareConfig:
    """The configuration in a YAML (or JSON) file; ``None`` gives the defaults."""
    if path is None:
        return PrepareConfig()
    from imis.io.files import read_yaml

    p = Path(path)
    src = str(path)
    data = read_yaml(p)
    if data is None:
        return PrepareConfig()
    cfg = PrepareConfig.from_mapping(data, src)
    # paths in the file are relative to the file
    base = p.parent
    changes: dict[str, Any] = {}
    if cfg.vocabulary and not Path(cfg.vocabulary).is_absolute():
        changes["vocabulary"] = str(base / cfg.vocabulary)
    if cfg.leakage_datasets:
        changes["leakage_datasets"] = tuple(
            str(base / d) if not Path(d).is_absolute() else d for d in cfg.leakage_datasets
        )
    return replace(cfg, **changes) if changes else cfg


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``'1-3, 5, 7-8'``."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}-{v}" if v > start else str(v))
            start = None
    return ", ".join(out)


def unnamed_values_error(case: str, source: str, values: list[int]) -> InputError:
    """The error for label values no name covers, with the three ways out."""
    return InputError(
        f"case {case}: label map {source} holds {len(values)} value(s) {_ranges(sorted(values))} that the "
        "source's labels do not name; name them under 'labels', set 'unnamed_labels: ignore' (they become "
        "background), or list the labels to prepare under 'keep_labels' in the configuration"
    )
