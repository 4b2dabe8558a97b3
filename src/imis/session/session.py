"""The Session: encode an image once, then prompt it many times, object by object.

Prompts are given in native pixel coordinates of the image handed to `set_image` ((x, y) with x the
column and y the row). Each object keeps a history of interaction steps so undo/redo restore both the
prompts and the prediction; `commit` paints the current object into a label map without overwriting
objects committed before it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from imis.errors import InputError, PromptError
from imis.models.interactive import Prediction, PromptableModel, PromptSpec
from imis.models.zoom import ZoomConfig, ZoomModel

Click = tuple[float, float, bool]
Box = tuple[float, float, float, float]
AXES = {"z": 0, "y": 1, "x": 2, 0: 0, 1: 1, 2: 2}


@dataclass
class Step:
    """One interaction: the prompts in force after it, and what the model returned."""

    clicks: tuple[Click, ...]
    box: Box | None
    text: str | None
    prediction: Prediction


@dataclass
class ObjectState:
    """The undo/redo history of the object being segmented."""

    steps: list[Step] = field(default_factory=list)
    redo_stack: list[Step] = field(default_factory=list)

    @property
    def current(self) -> Step | None:
        return self.steps[-1] if self.steps else None


@dataclass
class CacheStats:
    encodes: int = 0
    hits: int = 0


class Session:
    """Interactive segmentation of one image (or one slice of a volume) at a time.

    model: any :class:`~imis.models.interactive.PromptableModel` (an InteractiveModel from
    `imis.models.load_model`, a baseline); cache_size: how many image embeddings are kept (LRU), so
    going back to a slice of a volume does not re-encode it; zoom: zoom-in refinement of small objects
    (True, or a :class:`~imis.models.zoom.ZoomConfig`, e.g. ``ZoomConfig(start=2)`` to zoom only the
    corrections; see :mod:`imis.models.zoom`).
    """

    def __init__(self, model: PromptableModel, cache_size: int = 8, zoom: bool | ZoomConfig = False) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        if zoom is not False and not isinstance(model, ZoomModel):
            model = ZoomModel(model, zoom if isinstance(zoom, ZoomConfig) else None)
        self.model = model
        self.cache_size = cache_size
        self._cache: OrderedDict[str, object] = OrderedDict()  # the model's own embedding objects
        self.cache_stats = CacheStats()
        self._image: np.ndarray | None = None
        self._embedding: object | None = None
        self._object = ObjectState()
        self._labels: np.ndarray | None = None
        self._next_label = 1

    # ---- image ---------------------------------------------------------------------------------
    def set_image(
        self,
        image: np.ndarray,
        axis: str | int | None = None,
        index: int | None = None,
        name: str = "image",
    ) -> None:
        """Select a 2D image, or one slice of a 3D volume (axis z/y/x or 0/1/2 on a (z, y, x) array)."""
        arr = np.asarray(image)
        if axis is not None or index is not None:
            arr = self._slice(arr, axis, index, name)
        elif arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
            raise InputError(f"{name}: a volume of shape {arr.shape} needs an axis and a slice index")
        if arr.ndim not in (2, 3):
            raise InputError(f"{name}: expected a 2D image, got an array of shape {arr.shape}")
        key = _fingerprint(arr)
        emb = self._cache.get(key)
        if emb is None:
            emb = self.model.encode(arr, name)
            self.cache_stats.encodes += 1
            self._cache[key] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self.cache_stats.hits += 1
            self._cache.move_to_end(key)
        self._image = arr
        self._embedding = emb
        self._object = ObjectState()
        self._labels = np.zeros(arr.shape[:2], dtype=np.uint16)
        self._next_label = 1

    @staticmethod
    def _slice(arr: np.ndarray, axis: str | int | None, index: int | None, name: str) -> np.ndarray:
        if arr.ndim != 3:
            raise InputError(f"{name}: axis/index given but the array is {arr.ndim}D, not a volume")
        if axis not in AXES or index is None:
            raise InputError(f"{name}: pass axis as z/y/x (or 0/1/2) and an integer slice index")
        ax = AXES[axis]
        n = arr.shape[ax]
        if not -n <= int(index) < n:
            raise InputError(f"{name}: slice {index} outside axis {axis} of length {n}")
        return np.take(arr, int(index), axis=ax)

    @property
    def image_shape(self) -> tuple[int, int]:
        self._require_image()
        return self._image.shape[:2]

    def _require_image(self) -> None:
        if self._embedding is None:
            raise PromptError("no image set: call set_image() first")

    # ---- prompting -----------------------------------------------------------------------------
    def predict(
        self,
        clicks: Sequence[Click] | None = None,
        box: Box | None = None,
        text: str | None = None,
        mask: np.ndarray | torch.Tensor | bool | None = None,
    ) -> Prediction:
        """Segment the current object from these prompts (replacing the object's prompts).

        clicks: [(x, y, positive)]; box: (x0, y0, x1, y1) inclusive pixel corners; text: a target name
        or free text (models that take text); mask: True to feed back this object's previous low-res
        logits, or low-res logits (1, 1, h, w) / (h, w) from an earlier Prediction.
        """
        self._require_image()
        clicks = tuple((float(x), float(y), bool(p)) for x, y, p in (clicks or ()))
        box = _check_box(box, self.image_shape) if box is not None else None
        for x, y, _ in clicks:
            _check_point(x, y, self.image_shape)
        mask_logits = self._mask_prompt(mask)
        spec = PromptSpec(
            points=np.array([[x, y] for x, y, _ in clicks], dtype=np.float32) if clicks else None,
            labels=np.array([1 if p else 0 for _, _, p in clicks], dtype=np.int64) if clicks else None,
            box=np.asarray(box, dtype=np.float32) if box is not None else None,
            mask_logits=mask_logits,
            text=text,
        )
        pred = self.model.decode(self._embedding, spec)
        self._object.steps.append(Step(clicks, box, text, pred))
        self._object.redo_stack.clear()
        return pred

    def add_click(self, x: float, y: float, positive: bool = True) -> Prediction:
        """Refine the current object: keep its prompts, add a click, feed the previous logits back."""
        cur = self._object.current
        if cur is None:
            return self.predict(clicks=[(x, y, positive)])
        return self.predict(clicks=[*cur.clicks, (x, y, positive)], box=cur.box, text=cur.text, mask=True)

    def _mask_prompt(self, mask: np.ndarray | torch.Tensor | bool | None) -> torch.Tensor | None:
        if mask is None or mask is False:
            return None
        if mask is True:
            cur = self._object.current
            return None if cur is None else cur.prediction.low_res_logits
        t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float()
        while t.ndim < 4:
            t = t[None]
        return t

    # ---- history -------------------------------------------------------------------------------
    @property
    def current(self) -> Prediction | None:
        cur = self._object.current
        return None if cur is None else cur.prediction

    @property
    def history(self) -> list[Step]:
        return list(self._object.steps)

    def undo(self) -> Prediction | None:
        """Step back one interaction of the current object; returns the prediction now in force."""
        if self._object.steps:
            self._object.redo_stack.append(self._object.steps.pop())
        return self.current

    def redo(self) -> Prediction | None:
        if self._object.redo_stack:
            self._object.steps.append(self._object.redo_stack.pop())
        return self.current

    def reset(self) -> None:
        """Forget the current object's prompts and predictions (committed objects stay)."""
        self._object = ObjectState()

    # ---- objects -------------------------------------------------------------------------------
    def commit(self, label: int | None = None) -> int:
        """Add the current object to the label map (only where no committed object is) and start a new one.

        Returns the label value used.
        """
        self._require_image()
        cur = self._object.current
        if cur is None:
            raise PromptError("nothing to commit: the current object has no prediction")
        value = self._next_label if label is None else int(label)
        if not 1 <= value <= np.iinfo(self._labels.dtype).max:
            raise PromptError(f"label {value} outside 1..{np.iinfo(self._labels.dtype).max}")
        free = self._labels == 0
        self._labels[cur.prediction.mask & free] = value
        self._next_label = max(self._next_label, value + 1)
        self._object = ObjectState()
        return value

    @property
    def label_map(self) -> np.ndarray:
        self._require_image()
        return self._labels.copy()


def _fingerprint(arr: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def _check_point(x: float, y: float, hw: tuple[int, int]) -> None:
    h, w = hw
    if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x <= w - 1 and 0 <= y <= h - 1):
        raise PromptError(
            f"click ({x:g}, {y:g}) is outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})"
        )


def _check_box(box: Box, hw: tuple[int, int]) -> Box:
    h, w = hw
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise PromptError(f"box {box!r}: expected four numbers x0, y0, x1, y1") from None
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise PromptError(f"box {box!r}: coordinates must be finite")
    if x1 < x0 or y1 < y0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: need x0 <= x1 and y0 <= y1")
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
        raise PromptError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) extends outside the {w}x{h} image "
            f"(x in 0..{w - 1}, y in 0..{h - 1})"
        )
    if x1 == x0 and y1 == y0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: it covers a single point")
    return (x0, y0, x1, y1)


__all__ = ["Session", "Step", "ObjectState", "Prediction"]
