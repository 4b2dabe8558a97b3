"""One vocabulary of segmentation targets: canonical names, synonyms, laterality, anatomical groups.

Datasets name the same structure in many ways (``kidney_left``, ``Left kidney``, ``Kidney_L``,
``pulmonary nodule`` / ``lung nodule``). :meth:`Vocabulary.resolve` maps any raw label name to a
:class:`Target`: its canonical name (``"kidney"``), a display name (``"Left kidney"``), one of the six
anatomical groups of the IMIS-Bench paper (Table 3: Head and Neck, Thorax, Skeleton, Abdomen, Pelvis,
Lesions) and its laterality (``"left"``/``"right"``/``None``).

The built-in table (``vocabulary.yaml`` beside this module) covers the paper's Table 3, every label key of
the released IMIS-Net category map, the AAL atlas regions (``Thalamus_L`` ...), brain tissue classes and
common MSD/BraTS names. Users extend it with a YAML file of the same form (:meth:`Vocabulary.from_yaml`,
:meth:`Vocabulary.extend`)::

    unknown: error                  # optional: the unknown-name policy (see below)
    groups: [Vessels]               # optional: extra groups beside the six
    targets:
      carotid artery: {group: Vessels, paired: true, synonyms: [carotid, ica]}
      kidney: {synonyms: [nephros]} # an existing target: synonyms are added (group may be changed)
    synonyms:                       # optional shorthand: raw name -> canonical target name
      renal pelvis: kidney
    patterns:                       # optional regular expressions on the normalised name
      - {match: '^segment ([1-8])$', target: liver}

Resolution rules, in order (first hit wins):

1. **Normalise**: Unicode NFKC, camelCase split (``SupraMarginal`` -> ``supra marginal``), lower case, every
   run of characters other than ``a-z0-9`` -> one space, British spellings folded (tumour, oedema,
   oesophagus, haemorrhage).
2. Exact match of the name with a canonical name or synonym.
3. **Laterality**: the words ``left``/``right`` anywhere, or ``l``/``r``/``lt``/``rt`` as the first or last
   word, are removed and reported as the laterality (``kidney_left``, ``Left kidney``, ``Thalamus_L``,
   ``rib_left_3``); the rest is matched again.
4. Each candidate is also tried as a plural (a trailing ``s`` dropped), against the ``patterns`` (whose
   first capture group becomes ``Target.detail``: ``vertebrae_C1`` -> cervical spine, detail ``C1``), and
   without a trailing number (``rib 3`` -> rib, detail ``3``).

**Unknown names** follow the vocabulary's ``unknown`` policy (per call: ``resolve(name, unknown=...)``):
``"unknown"`` (the default) returns a Target with ``group == "Unknown"``, ``known == False``, its name the
normalised raw name without laterality, so that a dataset with a new structure still prepares and is
reported; ``"error"`` raises :class:`UnknownTargetError` naming the closest known names. ``"background"``
(and ``bg``, ``0``) resolves to the reserved group ``"Background"``; it is not a target.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from imis.errors import InputError

__all__ = [
    "BACKGROUND_GROUP",
    "GROUPS",
    "UNKNOWN_GROUP",
    "Target",
    "TargetInfo",
    "UnknownTargetError",
    "Vocabulary",
    "builtin_vocabulary",
    "normalize_name",
]

#: The six anatomical groups of the IMIS-Bench paper (Table 3), in the paper's order.
GROUPS: tuple[str, ...] = ("Head and Neck", "Thorax", "Skeleton", "Abdomen", "Pelvis", "Lesions")
#: Group of names the vocabulary does not know (policy ``unknown="unknown"``).
UNKNOWN_GROUP = "Unknown"
#: Group of the background label (not a target).
BACKGROUND_GROUP = "Background"

UnknownPolicy = Literal["unknown", "error"]
_POLICIES = ("unknown", "error")
_BACKGROUND_NAMES = frozenset({"background", "bg", "0", "clear label", "unlabeled", "unlabelled"})
_SPELLING = {"tumour": "tumor", "tumours": "tumors", "oedema": "edema", "oesophagus": "esophagus",
             "haemorrhage": "hemorrhage", "foetal": "fetal"}  # fmt: skip
_SIDE_WORDS = {"left": "left", "right": "right"}
_SIDE_EDGE_WORDS = {"l": "left", "r": "right", "lt": "left", "rt": "right"}


class UnknownTargetError(InputError):
    """A raw label name that the vocabulary cannot resolve (policy ``unknown="error"``)."""


def normalize_name(raw: str) -> str:
    """The matching form of a label name: ``"Kidney_Left"`` -> ``"kidney left"`` (see module doc, rule 1)."""
    s = unicodedata.normalize("NFKC", str(raw))
    s = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s).lower()
    words = re.sub(r"[^0-9a-z]+", " ", s).split()
    return " ".join(_SPELLING.get(w, w) for w in words)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Target:
    """A resolved target name.

    ``name`` is canonical (lower case, laterality merged: ``"kidney"``); ``display`` is for people and text
    prompts (``"Left kidney"``, ``"Cervical spine C1"``); ``group`` is one of :data:`GROUPS` (or a user
    group, :data:`UNKNOWN_GROUP`, :data:`BACKGROUND_GROUP`); ``laterality`` is ``"left"``, ``"right"`` or
    ``None``; ``detail`` is a sub-part taken from the raw name (``"C1"``, ``"3"``); ``code`` is the paper's
    Table 3 code (``"A11"``) where there is one; ``raw`` is the name given; ``known`` is False for names
    resolved by the ``"unknown"`` policy.
    """

    name: str
    display: str
    group: str
    laterality: str | None = None
    code: str | None = None
    detail: str | None = None
    raw: str | None = field(default=None, compare=False)
    known: bool = True

    @property
    def key(self) -> str:
        """Snake-case label key with side and detail: ``kidney_left``, ``rib_right_3``, ``cervical_spine_c1``."""
        parts = [self.name.replace(" ", "_")]
        if self.laterality:
            parts.append(self.laterality)
        if self.detail:
            parts.append(self.detail.lower())
        return "_".join(parts)

    @property
    def is_background(self) -> bool:
        return self.group == BACKGROUND_GROUP


@dataclass(frozen=True)
class TargetInfo:
    """One row of the vocabulary table."""

    name: str
    group: str
    code: str | None = None
    paired: bool = False
    display: str | None = None
    synonyms: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.display or _capitalize(self.name)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern
    target: str


class Vocabulary:
    """Target names -> :class:`Target` (see the module documentation for the rules and the YAML form).

    Instances are immutable: :meth:`extend` returns a new vocabulary. Build one with :meth:`builtin`,
    :meth:`from_yaml` or :meth:`from_dict`.
    """

    def __init__(
        self,
        targets: Mapping[str, TargetInfo],
        aliases: Mapping[str, str],
        patterns: Iterable[_Pattern] = (),
        groups: Iterable[str] = GROUPS,
        unknown: UnknownPolicy = "unknown",
    ) -> None:
        if unknown not in _POLICIES:
            raise InputError(f"vocabulary: unknown-name policy must be one of {_POLICIES}, got {unknown!r}")
        self._targets = dict(targets)
        self._aliases = dict(aliases)
        self._patterns = tuple(patterns)
        self._groups = tuple(groups)
        self.unknown: UnknownPolicy = unknown

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def builtin(cls) -> Vocabulary:
        """The built-in vocabulary (shared instance; it is immutable)."""
        return builtin_vocabulary()

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: Vocabulary | None = None, source: str = "<dict>"
    ) -> Vocabulary:
        """A vocabulary from the YAML form (already parsed), on top of ``base`` (``None``: from scratch)."""
        if not isinstance(data, Mapping):
            raise InputError(
                f"{source}: a vocabulary must be a mapping with 'targets', got {type(data).__name__}"
            )
        known_keys = {"version", "groups", "targets", "synonyms", "patterns", "unknown"}
        extra = set(data) - known_keys
        if extra:
            raise InputError(
                f"{source}: unknown vocabulary keys {sorted(extra)}; expected {sorted(known_keys)}"
            )
        groups = list(base._groups) if base is not None else list(GROUPS)
        for g in data.get("groups") or []:
            if not isinstance(g, str) or not g.strip():
                raise InputError(f"{source}: group names must be non-empty strings, got {g!r}")
            if g not in groups:
                groups.append(g)
        targets = dict(base._targets) if base is not None else {}
        aliases = dict(base._aliases) if base is not None else {}
        layer: dict[str, str] = {}  # aliases defined by this layer: conflicts within it are errors

        def add_alias(raw: str, canonical: str, what: str) -> None:
            key = normalize_name(raw)
            if not key:
                raise InputError(f"{source}: empty {what} {raw!r} for target {canonical!r}")
            if layer.get(key, canonical) != canonical:
                raise InputError(
                    f"{source}: {what} {raw!r} of {canonical!r} is already a name of {layer[key]!r}"
                )
            layer[key] = canonical
            aliases[key] = canonical

        raw_targets = data.get("targets") or {}
        if not isinstance(raw_targets, Mapping):
            raise InputError(f"{source}: 'targets' must map target names to their fields")
        for name, spec in raw_targets.items():
            spec = dict(spec or {})
            canonical = normalize_name(name)
            if not canonical:
                raise InputError(f"{source}: empty target name {name!r}")
            bad = set(spec) - {"group", "code", "paired", "display", "synonyms"}
            if bad:
                raise InputError(f"{source}: target {name!r} has unknown fields {sorted(bad)}")
            old = targets.get(canonical)
            group = spec.get("group", old.group if old else None)
            if group is None:
                raise InputError(f"{source}: new target {name!r} needs a 'group' (one of {groups})")
            if group not in groups:
                raise InputError(f"{source}: target {name!r} has group {group!r}, not one of {groups}")
            synonyms = spec.get("synonyms") or []
            if isinstance(synonyms, str) or not all(isinstance(s, (str, int)) for s in synonyms):
                raise InputError(f"{source}: synonyms of {name!r} must be a list of names")
            syn = tuple(str(s) for s in synonyms)
            targets[canonical] = TargetInfo(
                name=canonical,
                group=group,
                code=spec.get("code", old.code if old else None),
                paired=bool(spec.get("paired", old.paired if old else False)),
                display=spec.get("display", old.display if old else None),
                synonyms=(old.synonyms if old else ()) + syn,
            )
            add_alias(canonical, canonical, "name")
            for s in syn:
                add_alias(s, canonical, "synonym")
        for raw, target in (data.get("synonyms") or {}).items():
            canonical = aliases.get(normalize_name(target))
            if canonical is None:
                raise InputError(f"{source}: synonym {raw!r} points to unknown target {target!r}")
            add_alias(str(raw), canonical, "synonym")
        patterns = list(base._patterns) if base is not None else []
        for i, p in enumerate(data.get("patterns") or []):
            if not isinstance(p, Mapping) or "match" not in p or "target" not in p:
                raise InputError(f"{source}: pattern {i} needs 'match' (a regular expression) and 'target'")
            canonical = aliases.get(normalize_name(p["target"]))
            if canonical is None:
                raise InputError(f"{source}: pattern {p['match']!r} points to unknown target {p['target']!r}")
            try:
                regex = re.compile(p["match"])
            except re.error as exc:
                raise InputError(
                    f"{source}: pattern {p['match']!r} is not a valid regular expression ({exc})"
                ) from None
            patterns.insert(i, _Pattern(regex, canonical))  # a layer's patterns are tried before its base's
        unknown = data.get("unknown", base.unknown if base is not None else "unknown")
        return cls(targets, aliases, patterns, groups, unknown)

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike, *, base: Vocabulary | None | Literal["builtin"] = "builtin"
    ) -> Vocabulary:
        """A vocabulary from a YAML file, extending the built-in one (``base=None``: the file alone)."""
        data = _load_yaml(Path(path))
        base_vocab = builtin_vocabulary() if base == "builtin" else base
        return cls.from_dict(data, base=base_vocab, source=str(path))

    def extend(self, extension: Mapping[str, Any] | str | os.PathLike) -> Vocabulary:
        """A new vocabulary: this one plus ``extension`` (a YAML file path or its parsed mapping).

        The extension's names win over this vocabulary's where they differ (a synonym may be re-pointed);
        within one extension a name used for two targets is an error.
        """
        if isinstance(extension, (str, os.PathLike)):
            return self.from_dict(_load_yaml(Path(extension)), base=self, source=str(extension))
        return self.from_dict(extension, base=self, source="<extension>")

    # -- views ---------------------------------------------------------------------------------------------
    @property
    def groups(self) -> tuple[str, ...]:
        return self._groups

    @property
    def targets(self) -> dict[str, TargetInfo]:
        """Canonical name -> :class:`TargetInfo` (a copy)."""
        return dict(self._targets)

    def names(self, group: str | None = None) -> list[str]:
        """Canonical names, in table order (optionally of one group)."""
        return [n for n, t in self._targets.items() if group is None or t.group == group]

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, raw: object) -> bool:
        return isinstance(raw, str) and self.resolve(raw, unknown="unknown").known

    def group_of(self, raw: str) -> str:
        return self.resolve(raw).group

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the whole vocabulary (for manifests and reports)."""
        return {
            "version": 1,
            "groups": list(self._groups),
            "unknown": self.unknown,
            "targets": {
                t.name: {
                    k: v
                    for k, v in (
                        ("group", t.group),
                        ("code", t.code),
                        ("paired", t.paired or None),
                        ("display", t.display),
                        ("synonyms", list(t.synonyms) or None),
                    )
                    if v is not None
                }
                for t in self._targets.values()
            },
            "patterns": [{"match": p.regex.pattern, "target": p.target} for p in self._patterns],
        }

    # -- resolution ------------------------------------------------------------------------------------------
    def resolve(self, raw: str, *, unknown: UnknownPolicy | None = None) -> Target:
        """Resolve a raw label name (see the module documentation for the rules and the unknown policy)."""
        policy = unknown or self.unknown
        if policy not in _POLICIES:
            raise InputError(f"unknown-name policy must be one of {_POLICIES}, got {policy!r}")
        text = str(raw)
        norm = normalize_name(text)
        if norm in _BACKGROUND_NAMES:
            return Target("background", "Background", BACKGROUND_GROUP, raw=text)
        if not norm:
            if policy == "error":
                raise UnknownTargetError(f"target name {text!r} holds no letters or digits")
            return Target("", text, UNKNOWN_GROUP, raw=text, known=False)
        hit = self._lookup(norm)
        side = None
        if hit is None:
            stripped, side = _strip_side(norm)
            if side is not None and stripped:
                hit = self._lookup(stripped)
                norm = stripped
        if hit is None:
            if policy == "error":
                close = difflib.get_close_matches(norm, list(self._aliases), n=6, cutoff=0.75)
                names = list(dict.fromkeys(self._aliases[c] for c in close))[:3]
                hint = f"; did you mean {', '.join(repr(n) for n in names)}?" if names else ""
                raise UnknownTargetError(
                    f"unknown target name {text!r} (normalised {norm!r}){hint} "
                    "Add it to a vocabulary YAML (targets/synonyms) or use the 'unknown' policy."
                )
            display = _capitalize(f"{side} {norm}" if side else norm)
            return Target(norm, display, UNKNOWN_GROUP, laterality=side, raw=text, known=False)
        canonical, detail = hit
        info = self._targets[canonical]
        base = info.display_name
        display = f"{_capitalize(side)} {base[:1].lower() + base[1:]}" if side else base
        if detail:
            display = f"{display} {detail}"
        return Target(
            canonical, display, info.group, laterality=side, code=info.code, detail=detail, raw=text
        )

    def resolve_many(
        self, names: Iterable[str], *, unknown: UnknownPolicy | None = None
    ) -> dict[str, Target]:
        """``{raw: resolve(raw)}`` for several names."""
        return {n: self.resolve(n, unknown=unknown) for n in names}

    def _lookup(self, norm: str) -> tuple[str, str | None] | None:
        """(canonical name, detail) for a normalised name without laterality, or None."""
        for cand in (norm, norm[:-1] if norm.endswith("s") and len(norm) > 3 else None):
            if cand and cand in self._aliases:
                return self._aliases[cand], None
        for p in self._patterns:
            m = p.regex.match(norm)
            if m:
                detail = m.group(1) if m.re.groups else None
                return p.target, _format_detail(detail)
        words = norm.split()
        if len(words) > 1 and words[-1].isdigit():
            rest = " ".join(words[:-1])
            found = self._lookup(rest)
            if found is not None and found[1] is None:
                return found[0], words[-1]
        return None


def _format_detail(detail: str | None) -> str | None:
    if detail is None:
        return None
    detail = detail.strip()
    return detail.upper() if re.fullmatch(r"[a-z]\d+", detail) else detail


def _strip_side(norm: str) -> tuple[str, str | None]:
    """Remove laterality words; return (rest, "left"/"right"/None). Both sides at once are not laterality."""
    words = norm.split()
    sides = set()
    keep = []
    for i, w in enumerate(words):
        if w in _SIDE_WORDS:
            sides.add(_SIDE_WORDS[w])
        elif w in _SIDE_EDGE_WORDS and (i == 0 or i == len(words) - 1) and len(words) > 1:
            sides.add(_SIDE_EDGE_WORDS[w])
        else:
            keep.append(w)
    if len(sides) != 1:
        return norm, None
    return " ".join(keep), sides.pop()


def _load_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: vocabulary file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read vocabulary file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({' '.join(str(exc).split())[:200]})") from None
    return data if data is not None else {}


@lru_cache(maxsize=1)
def builtin_vocabulary() -> Vocabulary:
    """The built-in vocabulary from ``imis/data/vocabulary.yaml`` (loaded once)."""
    text = resources.files("imis.data").joinpath("vocabulary.yaml").read_text(encoding="utf-8")
    return Vocabulary.from_dict(yaml.safe_load(text), base=None, source="imis/data/vocabulary.yaml")
