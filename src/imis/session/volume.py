"""VolumeSession: segment structures of a 3D volume from prompts on any slice, one label map per volume.

API (stable; the app and `imis segment --propagate` are built on it)::

    vs = VolumeSession(model, cache_size=64)      # model: imis.models.load_model(...)
    vs.open(read_image("ct.nii.gz"))              # an imis.io ImageData volume (geometry kept) or a (z, y, x) array
    vs.set_slice("z", 40)                         # encodes the slice (LRU-cached per (axis, index))
    pred = vs.predict(box=(60, 190, 315, 385))    # or clicks=[(x, y, True)], text="liver", mask=True
    pred = vs.add_click(120, 200, positive=False) # refine the same slice; previous logits fed back
    res = vs.propagate(progress=lambda done, total: ...)   # neighbouring slices, both directions
    vs.set_slice("z", 52); vs.add_click(...); vs.propagate()  # a correction re-propagates from there
    vs.refine_orthogonal()                        # optional: re-segment along the other two axes, majority vote
    vs.undo(); vs.redo()                          # per object, across slices (a propagation is one step)
    label = vs.commit(name="liver")               # paint into the label map; returns the label value
    vs.label_map                                  # (z, y, x) uint16 copy; vs.objects: [ObjectInfo]
    vs.select(label)                              # reopen a committed object (its undo history kept)
    vs.import_labels(read_image("old.nii.gz"), names={1: "liver"})  # same geometry required

Slices and coordinates. A slice is ``np.take(volume, index, axis)`` of the ``(z, y, x)`` array, never
flipped or transposed: a **z** slice is ``(y, x)`` (rows = y, columns = x), a **y** slice is ``(z, x)``
(rows = z, columns = x), an **x** slice is ``(z, y)`` (rows = z, columns = y). Prompts are ``(x, y)`` =
(column, row) of the slice as returned by :meth:`VolumeSession.slice_image`, 0-based pixels; boxes are
``(x0, y0, x1, y1)`` inclusive. Physical orientation comes from the volume's geometry (imis.io: LPS),
which every writer keeps, so a label map lands on the anatomy it was drawn on whatever the axis.

Objects. The object being edited (the *draft*) owns a 3D mask and a history of actions; each action
(a prediction on one slice, a propagation over many) stores the planes it changed, so ``undo``/``redo``
restore them on every slice. ``commit`` paints the draft only where no committed object is: accepted
objects never overwrite each other. Slices prompted by the user are *anchors*: a propagation stops
before the next anchor, so a second prompted slice bounds it, and a correction on a slice re-propagates
from there (see :mod:`imis.session.propagation` for the rules and how they were measured).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from imis.errors import InputError, PromptError
from imis.io.geometry import Geometry
from imis.io.image import ImageData
from imis.models.interactive import Embedding, InteractiveModel, Prediction, PromptSpec
from imis.session.orthogonal import RefineOptions, refine_orthogonal
from imis.session.propagation import (
    AXIS_NAMES,
    PropagationResult,
    PropagationRules,
    default_rules,
    propagate_object,
    seed_kind,
)
from imis.session.propagation import plane_view as _view
from imis.session.session import Box, Click, _check_box, _check_point

__all__ = ["ObjectInfo", "SliceAction", "VolumeSession", "PropagationResult", "PropagationRules"]

_AXES = {"z": 0, "y": 1, "x": 2, 0: 0, 1: 1, 2: 2}
Key = tuple[int, int]  # (array axis, slice index)


@dataclass
class SliceAction:
    """One undoable step of an object: the planes it changed, before and after.

    kind: "predict" (a prompted slice, an anchor), "propagate" or "refine" (orthogonal refinement);
    prompts/prediction are set for "predict" only; result for "propagate".
    """

    kind: str
    axis: int
    index: int
    planes: dict[Key, tuple[np.ndarray, np.ndarray]]
    clicks: tuple[Click, ...] = ()
    box: Box | None = None
    text: str | None = None
    prediction: Prediction | None = None
    result: PropagationResult | None = None


@dataclass
class _Object:
    mask: np.ndarray  # bool (z, y, x)
    name: str | None = None
    label: int | None = None
    actions: list[SliceAction] = field(default_factory=list)
    redo: list[SliceAction] = field(default_factory=list)
    painted: np.ndarray | None = None  # voxels it holds in the label map once committed

    def last_predict(self, key: Key) -> SliceAction | None:
        for a in reversed(self.actions):
            if a.kind == "predict" and (a.axis, a.index) == key:
                return a
        return None

    def propagated_logits(self, key: Key) -> torch.Tensor | None:
        """Low-res logits of the latest propagation that filled slice ``key`` (None if none did)."""
        for a in reversed(self.actions):
            if (a.axis, a.index) == key and a.kind == "predict":
                return None
            if a.kind == "propagate" and a.axis == key[0] and key[1] in a.result.logits:
                return a.result.logits[key[1]]
        return None

    def anchors(self, axis: int) -> set[int]:
        return {a.index for a in self.actions if a.kind == "predict" and a.axis == axis}


@dataclass(frozen=True)
class ObjectInfo:
    """A committed object: its label value, name and number of voxels in the label map."""

    label: int
    name: str | None
    voxels: int


@dataclass
class CacheStats:
    encodes: int = 0
    hits: int = 0
    encode_seconds: float = 0.0


class VolumeSession:
    """Interactive 3D segmentation of one volume with a 2D promptable model (see the module docstring).

    model: an InteractiveModel; cache_size: slice embeddings kept (LRU over (axis, index)); a 256-input
    model's embedding is 4 MiB, so 64 slices hold 256 MiB.
    """

    def __init__(self, model: InteractiveModel, cache_size: int = 64) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.model = model
        self.cache_size = cache_size
        self.cache_stats = CacheStats()
        self._cache: OrderedDict[Key, Embedding] = OrderedDict()
        self._volume: np.ndarray | None = None
        self.geometry: Geometry | None = None
        self.source = "<volume>"
        self._labels: np.ndarray | None = None
        self._objects: dict[int, _Object] = {}
        self._draft: _Object | None = None
        self._key: Key | None = None

    # ---- volume and slices ---------------------------------------------------------------------
    def open(self, volume: ImageData | np.ndarray, geometry: Geometry | None = None) -> None:
        """Open a volume: an imis.io ImageData of kind "volume", or a (z, y, x) array (+ optional geometry).

        Forgets the previous volume, its cache, label map and objects.
        """
        if isinstance(volume, ImageData):
            if volume.kind != "volume":
                raise InputError(
                    f"{volume.source}: is a 2D image of shape {volume.array.shape}; a volume (z, y, x) is "
                    "needed for 3D segmentation"
                )
            arr, geometry, self.source = volume.array, geometry or volume.geometry, volume.source
        else:
            arr, self.source = np.asarray(volume), "<volume>"
        if arr.ndim != 3 or min(arr.shape) < 1 or sorted(arr.shape)[1] < 2:
            raise InputError(f"{self.source}: expected a (z, y, x) volume, got an array of shape {arr.shape}")
        if geometry is not None and geometry.ndim != 3:
            raise InputError(f"{self.source}: a volume needs a 3D geometry, got {geometry.ndim}D")
        self._volume = arr
        self.geometry = geometry or Geometry.identity(3)
        self._cache.clear()
        self._labels = np.zeros(arr.shape, dtype=np.uint16)
        self._objects = {}
        self._draft = None
        self._key = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._require_volume().shape)

    def _require_volume(self) -> np.ndarray:
        if self._volume is None:
            raise PromptError("no volume open: call open() first")
        return self._volume

    def axis_index(self, axis: str | int) -> int:
        if isinstance(axis, bool) or axis not in _AXES:
            raise InputError(f"{self.source}: axis {axis!r} is not one of z, y, x (or 0, 1, 2)")
        return _AXES[axis]

    def check_slice(self, axis: str | int, index: int) -> Key:
        """(array axis, index) after checking both against the open volume."""
        ax = self.axis_index(axis)
        n = self._require_volume().shape[ax]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise InputError(
                f"{self.source}: slice {index!r} is out of range for axis {AXIS_NAMES[ax]} "
                f"(volume (z, y, x) = {self._volume.shape}; valid 0..{n - 1})"
            )
        return ax, int(index)

    def slice_image(self, axis: str | int, index: int) -> np.ndarray:
        """The slice as shown and prompted: ``np.take(volume, index, axis)`` (see the module docstring)."""
        ax, i = self.check_slice(axis, index)
        return np.take(self._volume, i, axis=ax)

    def set_slice(self, axis: str | int, index: int) -> None:
        """Make (axis, index) the slice that predict/add_click act on; encodes it unless cached."""
        key = self.check_slice(axis, index)
        self.embedding(key)
        self._key = key

    @property
    def current_slice(self) -> tuple[str, int] | None:
        return None if self._key is None else (AXIS_NAMES[self._key[0]], self._key[1])

    def embedding(self, key: Key) -> Embedding:
        """The cached (LRU) or freshly computed embedding of one slice."""
        emb = self._cache.get(key)
        if emb is not None:
            self.cache_stats.hits += 1
            self._cache.move_to_end(key)
            return emb
        self.encode_slices(key[0], [key[1]])
        return self._cache[key]

    def encode_slices(self, axis: int, indices: Sequence[int]) -> float:
        """Encode the slices not cached yet, in one batch; returns the seconds spent encoding."""
        todo = [i for i in indices if (axis, i) not in self._cache]
        if not todo:
            return 0.0
        t0 = time.perf_counter()
        images = [np.take(self._volume, i, axis=axis) for i in todo]
        embs = self.model.encode_batch(images, self.source)
        for i, emb in zip(todo, embs, strict=True):
            self._cache[(axis, i)] = emb
            self._cache.move_to_end((axis, i))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        dt = time.perf_counter() - t0
        self.cache_stats.encodes += len(todo)
        self.cache_stats.encode_seconds += dt
        return dt

    def put_embedding(self, axis: str | int, index: int, embedding: Embedding) -> None:
        """Insert an embedding computed elsewhere (another process, a stored run) into the LRU cache."""
        key = self.check_slice(axis, index)
        if tuple(embedding.frame.orig_hw) != self._plane_shape(key[0]):
            raise InputError(
                f"{self.source}: embedding of a {embedding.frame.orig_hw} image for a {self._plane_shape(key[0])} slice"
            )
        self._cache[key] = embedding
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _require_slice(self) -> Key:
        self._require_volume()
        if self._key is None:
            raise PromptError("no slice selected: call set_slice(axis, index) first")
        return self._key

    def _plane_shape(self, axis: int) -> tuple[int, int]:
        return tuple(s for d, s in enumerate(self._volume.shape) if d != axis)

    # ---- the draft object ----------------------------------------------------------------------
    def _draft_obj(self) -> _Object:
        if self._draft is None:
            self._draft = _Object(mask=np.zeros(self._volume.shape, dtype=bool))
        return self._draft

    def plane(self, axis: str | int, index: int) -> np.ndarray:
        """The draft object's 2D mask on one slice (a copy, oriented as :meth:`slice_image`)."""
        key = self.check_slice(axis, index)
        return _view(self._draft_obj().mask, key).copy()

    def apply_planes(self, kind: str, key: Key, new: Mapping[Key, np.ndarray], **extra) -> SliceAction:
        """Write planes into the draft as one undoable action (clears redo)."""
        obj = self._draft_obj()
        planes = {}
        for k, m in new.items():
            view = _view(obj.mask, k)
            planes[k] = (view.copy(), np.asarray(m, bool).copy())
            view[...] = m
        action = SliceAction(kind, key[0], key[1], planes, **extra)
        obj.actions.append(action)
        obj.redo.clear()
        return action

    # ---- prompting -----------------------------------------------------------------------------
    def predict(
        self,
        clicks: Sequence[Click] | None = None,
        box: Box | None = None,
        text: str | None = None,
        mask: np.ndarray | torch.Tensor | bool | None = None,
    ) -> Prediction:
        """Segment the draft object on the current slice from these prompts (replacing its plane there).

        clicks: [(x, y, positive)]; box: (x0, y0, x1, y1); text: target name or free text; mask: True to
        feed back this slice's previous logits, or low-res logits from an earlier Prediction.
        """
        key = self._require_slice()
        hw = self._plane_shape(key[0])
        clicks = tuple((float(x), float(y), bool(p)) for x, y, p in (clicks or ()))
        box = _check_box(box, hw) if box is not None else None
        for x, y, _ in clicks:
            _check_point(x, y, hw)
        logits = self._mask_prompt(key, mask)
        spec = PromptSpec(
            points=np.array([[x, y] for x, y, _ in clicks], dtype=np.float32) if clicks else None,
            labels=np.array([1 if p else 0 for *_, p in clicks], dtype=np.int64) if clicks else None,
            box=np.asarray(box, dtype=np.float32) if box is not None else None,
            mask_logits=logits,
            text=text,
        )
        pred = self.model.decode(self.embedding(key), spec)
        self.apply_planes(
            "predict", key, {key: pred.mask}, clicks=clicks, box=box, text=text, prediction=pred
        )
        return pred

    def add_click(self, x: float, y: float, positive: bool = True) -> Prediction:
        """Refine the draft on the current slice: keep its prompts there, add a click, feed the logits back."""
        key = self._require_slice()
        last = self._draft.last_predict(key) if self._draft is not None else None
        if last is None:
            # On a propagated slice the correction starts from the logits propagation left there.
            prompt = self._draft.propagated_logits(key) if self._draft is not None else None
            return self.predict(clicks=[(x, y, positive)], mask=prompt)
        clicks = [*last.clicks, (x, y, positive)]
        return self.predict(clicks=clicks, box=last.box, text=last.text, mask=True)

    def _mask_prompt(self, key: Key, mask) -> torch.Tensor | None:
        if mask is None or mask is False:
            return None
        if mask is True:
            last = self._draft.last_predict(key) if self._draft is not None else None
            return None if last is None else last.prediction.low_res_logits
        t = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        t = t.float()
        while t.ndim < 4:
            t = t[None]
        return t

    @property
    def current(self) -> Prediction | None:
        """The draft's latest prediction on the current slice (None where it has none)."""
        if self._draft is None or self._key is None:
            return None
        last = self._draft.last_predict(self._key)
        return None if last is None else last.prediction

    @property
    def history(self) -> list[SliceAction]:
        return [] if self._draft is None else list(self._draft.actions)

    @property
    def object_mask(self) -> np.ndarray:
        """The draft object's 3D mask (bool (z, y, x) copy; all False when there is no draft)."""
        self._require_volume()
        return self._draft_obj().mask.copy()

    def anchors(self, axis: str | int) -> list[int]:
        """Slices of ``axis`` the user prompted for the draft object (they bound propagation)."""
        return [] if self._draft is None else sorted(self._draft.anchors(self.axis_index(axis)))

    # ---- propagation ---------------------------------------------------------------------------
    def propagate(
        self,
        direction: str = "both",
        rules: PropagationRules | None = None,
        progress: Callable[[int, int], None] | None = None,
        max_slices: int | None = None,
    ) -> PropagationResult:
        """Segment the neighbouring slices from the draft's mask on the current slice (one undoable step).

        direction: "both", "up" (increasing index) or "down"; progress(done, total) is called after each
        slice (total is the most slices it may visit). Stops where the structure ends (see the rules),
        at the volume's edge, or before the next slice the user prompted. Without ``rules``, the rules
        measured for the seed's prompt: a box (or text) or clicks alone (``default_rules``);
        ``max_slices``: at most that many slices each way (replaces the rules' own limit).
        """
        key = self._require_slice()
        if direction not in ("both", "up", "down"):
            raise PromptError(f"direction must be both, up or down, not {direction!r}")
        if self._draft is None or not _view(self._draft.mask, key).any():
            raise PromptError(
                f"nothing to propagate: the object is empty on slice {AXIS_NAMES[key[0]]}={key[1]}; "
                "prompt it there first"
            )
        rules = rules or default_rules(seed_kind(self, key))
        if max_slices is not None:
            rules = replace(rules, max_slices=max_slices)
        result, planes = propagate_object(self, key, direction, rules, progress)
        self.apply_planes("propagate", key, planes, result=result)
        return result

    def refine_orthogonal(
        self, options: RefineOptions | None = None, axis: str | int | None = None, batch_size: int = 4
    ) -> np.ndarray:
        """Refine the draft's 3D mask by orthogonal consensus (one undoable step; returns the new mask).

        Its slices along the two axes other than ``axis`` (default: the axis of the latest propagation,
        else the current slice's) are re-segmented from its tight box there and combined with it
        (:mod:`imis.session.orthogonal`); those slices are encoded ``batch_size`` at a time.
        """
        key = self._require_slice()
        if self._draft is None or not self._draft.mask.any():
            raise PromptError("nothing to refine: the object is empty; prompt (and propagate) it first")
        walks = [a.axis for a in self._draft.actions if a.kind == "propagate"]
        ax = self.axis_index(axis) if axis is not None else (walks[-1] if walks else key[0])
        before = self._draft.mask.copy()
        refined = refine_orthogonal(
            self.model,
            lambda a, i: self.embedding((a, i)),
            before,
            ax,
            options,
            prefetch=self.encode_slices,
            batch_size=batch_size,
        )
        other = tuple(d for d in range(3) if d != ax)
        changed = np.nonzero((refined ^ before).any(axis=other))[0]
        planes = {(ax, int(i)): _view(refined, (ax, int(i))) for i in changed}
        self.apply_planes("refine", key, planes)
        return refined

    # ---- history -------------------------------------------------------------------------------
    def undo(self) -> bool:
        """Undo the draft's last action (on whatever slices it touched); False when there is none."""
        obj = self._draft
        if obj is None or not obj.actions:
            return False
        action = obj.actions.pop()
        for k, (before, _) in action.planes.items():
            _view(obj.mask, k)[...] = before
        obj.redo.append(action)
        return True

    def redo(self) -> bool:
        obj = self._draft
        if obj is None or not obj.redo:
            return False
        action = obj.redo.pop()
        for k, (_, after) in action.planes.items():
            _view(obj.mask, k)[...] = after
        obj.actions.append(action)
        return True

    def reset(self) -> None:
        """Discard the draft object (committed objects stay)."""
        self._draft = None

    # ---- objects and the label map -------------------------------------------------------------
    def commit(self, label: int | None = None, name: str | None = None) -> int:
        """Paint the draft into the label map where no other object is; return its label value."""
        self._require_volume()
        obj = self._draft
        if obj is None or not obj.mask.any():
            raise PromptError("nothing to commit: the current object is empty")
        limit = np.iinfo(self._labels.dtype).max
        if label is None:
            label = obj.label or (max(self._objects, default=0) + 1)
        label = int(label)
        if not 1 <= label <= limit:
            raise PromptError(f"label {label} outside 1..{limit}")
        if label in self._objects:
            raise PromptError(
                f"label {label} is already object {self._objects[label].name!r}; select() it to edit"
            )
        painted = obj.mask & (self._labels == 0)
        self._labels[painted] = label
        obj.label, obj.painted = label, painted
        obj.name = name if name is not None else obj.name
        self._objects[label] = obj
        self._draft = None
        return label

    def select(self, label: int) -> None:
        """Reopen a committed object as the draft (lifted out of the label map; its history kept)."""
        if self._draft is not None and self._draft.mask.any():
            raise PromptError("commit() or reset() the current object before selecting another")
        obj = self._objects.pop(int(label), None)
        if obj is None:
            raise PromptError(f"no object with label {label} (labels: {sorted(self._objects)})")
        self._labels[self._labels == obj.label] = 0
        self._draft = obj

    def remove(self, label: int) -> None:
        """Delete a committed object from the label map."""
        obj = self._objects.pop(int(label), None)
        if obj is None:
            raise PromptError(f"no object with label {label} (labels: {sorted(self._objects)})")
        self._labels[self._labels == obj.label] = 0

    @property
    def objects(self) -> list[ObjectInfo]:
        counts = np.bincount(self._labels.ravel(), minlength=max(self._objects, default=0) + 1)
        return [ObjectInfo(k, o.name, int(counts[k])) for k, o in sorted(self._objects.items())]

    @property
    def label_map(self) -> np.ndarray:
        """The (z, y, x) uint16 label map of the committed objects (a copy)."""
        self._require_volume()
        return self._labels.copy()

    def import_labels(
        self, labels: ImageData | np.ndarray, names: Mapping[int, str] | None = None, atol: float = 1e-3
    ) -> list[int]:
        """Add the objects of an existing label map (same shape and geometry); returns their labels.

        Labels already used by an object here are refused rather than merged.
        """
        self._require_volume()
        src = labels.source if isinstance(labels, ImageData) else "<labels>"
        arr = labels.array if isinstance(labels, ImageData) else np.asarray(labels)
        if arr.shape != self._volume.shape:
            raise InputError(
                f"{src}: label map of shape {arr.shape} does not match the volume {self._volume.shape}"
            )
        if isinstance(labels, ImageData):
            _check_same_geometry(labels.geometry, self.geometry, src, self.source, atol)
        if arr.dtype.kind not in "biu" or (arr.size and int(arr.min()) < 0):
            raise InputError(f"{src}: a label map must hold non-negative integers, got {arr.dtype}")
        values = [int(v) for v in np.unique(arr) if v != 0]
        clash = [v for v in values if v in self._objects]
        if clash or (values and values[-1] > np.iinfo(self._labels.dtype).max):
            raise InputError(f"{src}: labels {clash or values[-1:]} are already used or too large")
        for v in values:
            m = (arr == v) & (self._labels == 0)
            self._labels[m] = v
            name = (names or {}).get(v)
            self._objects[v] = _Object(mask=arr == v, name=name, label=v, painted=m)
        return values


def _check_same_geometry(a: Geometry, b: Geometry, src: str, ref: str, atol: float) -> None:
    for field_name in ("spacing", "origin", "direction"):
        va, vb = np.asarray(getattr(a, field_name)), np.asarray(getattr(b, field_name))
        if va.shape != vb.shape or not np.allclose(va, vb, atol=atol):
            raise InputError(
                f"{src}: label map {field_name} {tuple(va.ravel().round(4))} differs from the volume "
                f"{ref}'s {tuple(vb.ravel().round(4))}; it was made on another image"
            )
