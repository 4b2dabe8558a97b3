"""What one user works on: an image or volume, one label map, the objects in it, and the draft being prompted.

`Document` holds what both kinds share (the display array, object names/colours/visibility, planes);
`ImageDocument` is a 2D image (a volume of one axial slice to the page) prompted through a `Session`;
volumes are `imis.app.volume_doc.VolumeDocument`, built on the `VolumeSession`. In a 2D image the
prediction is painted live into the label map as the active object's label, only where no other object
is, so objects never overwrite each other; undo/redo and reset act on the active object's prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from imis.app.embeddings import fingerprint
from imis.app.strokes import lasso_prompt, parse_stroke, scribble_clicks
from imis.errors import InputError, PromptError
from imis.io import LABEL_PALETTE, ImageData
from imis.session import Session

AXES = ("z", "y", "x")
#: Display planes: the array axes shown as rows and columns of each view.
PLANE_AXES = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}


@dataclass
class ObjectInfo:
    label: int
    name: str
    color: tuple[int, int, int]
    visible: bool = True

    def to_json(self) -> dict:
        return {"label": self.label, "name": self.name, "color": list(self.color), "visible": self.visible}


@dataclass
class Draft:
    """The prompts on one plane for one object; `base` is the plane's labels before the draft."""

    axis: str
    index: int
    label: int
    base: np.ndarray
    session: Session = field(repr=False)
    redo_depth: int = 0  # how many undone steps redo can bring back


def palette_color(label: int) -> tuple[int, int, int]:
    r, g, b = LABEL_PALETTE[(label - 1) % len(LABEL_PALETTE)]
    return int(r), int(g), int(b)


class Document:
    """What 2D and volume documents share (see the module docstring); subclasses do the prompting."""

    def __init__(self, doc_id: str, data: ImageData, model, name: str) -> None:
        self.id = doc_id
        self.data = data
        self.name = name
        self.model = model
        self.is_2d = data.kind == "2d"
        arr = data.array
        self.volume = arr[None] if self.is_2d else arr  # model input; 2D may be (1, y, x, 3)
        gray = arr.mean(axis=-1) if data.is_rgb else arr
        self.display = (gray[None] if self.is_2d else gray).astype(np.float32, copy=False)
        self.objects: list[ObjectInfo] = []
        self.active = self._new_object().label
        self.created = time.time()
        lo, hi = np.percentile(self.display[:: max(1, self.display.shape[0] // 16)], [1, 99])
        self.auto_window = (float(hi - lo) or 1.0, float((hi + lo) / 2))
        self.range = (float(self.display.min()), float(self.display.max()))
        self.focus = ("z", self.display.shape[0] // 2)

    # ---- planes --------------------------------------------------------------------------------
    def check_plane(self, axis: str, index: int) -> tuple[str, int]:
        if axis not in AXES or (self.is_2d and axis != "z"):
            allowed = "z" if self.is_2d else "z, y or x"
            raise PromptError(f"view axis {axis!r} is not one of {allowed}")
        n = self.display.shape[AXES.index(axis)]
        if not 0 <= int(index) < n:
            raise PromptError(f"slice {index} is outside axis {axis} (0..{n - 1})")
        return axis, int(index)

    def _index(self, axis: str, index: int) -> tuple:
        sl: list = [slice(None)] * 3
        sl[AXES.index(axis)] = index
        return tuple(sl)

    def display_plane(self, axis: str, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.display[self._index(axis, index)])

    def model_plane(self, axis: str, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.volume[self._index(axis, index)])

    def embed_key(self, axis: str, index: int) -> str:
        """The slice's key in the shared embedding cache (by content: see imis.app.embeddings)."""
        return fingerprint(self.model_plane(axis, index))

    # ---- objects -------------------------------------------------------------------------------
    def _new_object(self, name: str | None = None) -> ObjectInfo:
        label = max((o.label for o in self.objects), default=0) + 1
        obj = ObjectInfo(label, name or f"object {label}", palette_color(label))
        self.objects.append(obj)
        return obj

    def object(self, label: int) -> ObjectInfo:
        for o in self.objects:
            if o.label == label:
                return o
        raise PromptError(f"no object with label {label}")

    def update_object(self, label: int, name=None, color=None, visible=None) -> ObjectInfo:
        obj = self.object(label)
        if name is not None:
            name = str(name).strip()[:80]
            if not name:
                raise PromptError("an object name cannot be empty")
            obj.name = name
        if color is not None:
            obj.color = _parse_color(color)
        if visible is not None:
            obj.visible = bool(visible)
        return obj

    def label_plane(self, axis: str, index: int) -> np.ndarray:
        raise NotImplementedError

    def export_labels(self) -> np.ndarray:
        """The label map as written: (y, x) for a 2D image, (z, y, x) for a volume."""
        raise NotImplementedError


class ImageDocument(Document):
    """A 2D image prompted through a Session (see the module docstring)."""

    def __init__(self, doc_id: str, data: ImageData, model, name: str) -> None:
        super().__init__(doc_id, data, model, name)
        self.labels = np.zeros(self.display.shape, dtype=np.uint16)
        self.draft: Draft | None = None

    def label_plane(self, axis: str, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.labels[self._index(axis, index)])

    def export_labels(self) -> np.ndarray:
        return self.labels[0]

    def propagate(self, axis: str, index: int, max_slices=None, progress=None) -> int:
        raise PromptError("propagation needs a volume; this is a 2D image")

    def next_object(self, name: str | None = None) -> int:
        """Keep the active object and start a new one (an empty object is reused, not duplicated)."""
        self.draft = None
        cur = self.object(self.active)
        if not (self.labels == cur.label).any():
            if name:
                cur.name = name
            return cur.label
        self.active = self._new_object(name).label
        return self.active

    def select(self, label: int) -> None:
        self.object(label)
        self.draft = None
        self.active = label

    def delete_object(self, label: int) -> None:
        obj = self.object(label)
        self.labels[self.labels == label] = 0
        self.objects.remove(obj)
        self.draft = None
        if not self.objects:
            self._new_object()
        if self.active == label:
            self.active = self.objects[-1].label

    # ---- prompting -----------------------------------------------------------------------------
    def _draft(self, axis: str, index: int) -> Draft:
        axis, index = self.check_plane(axis, index)
        d = self.draft
        if d is None or (d.axis, d.index, d.label) != (axis, index, self.active):
            session = Session(self.model, cache_size=1)
            session.set_image(self.model_plane(axis, index), name=self.embed_key(axis, index))
            d = Draft(axis, index, self.active, self.label_plane(axis, index), session)
            self.draft = d
        return d

    def _paint(self, d: Draft) -> None:
        new = d.base.copy()
        new[new == d.label] = 0
        pred = d.session.current
        if pred is not None:
            new[pred.mask & (new == 0)] = d.label
        self.labels[self._index(d.axis, d.index)] = new

    def prompt(self, axis: str, index: int, kind: str, value) -> float | None:
        """Apply one prompt on a plane; returns the model's predicted IoU."""
        d = self._draft(axis, index)
        s = d.session
        cur = s.history[-1] if s.history else None
        prev = (cur.clicks, cur.box, cur.text) if cur else ((), None, None)
        kind, value = parse_prompt(kind, value)
        pred = apply_prompt(s, kind, value, prev, d.base.shape)
        d.redo_depth = 0
        self._paint(d)
        return float(pred.quality)

    def history_op(self, op: str) -> None:
        d = self.draft
        if d is None:
            return
        if op == "undo":
            d.redo_depth += bool(d.session.history)
            d.session.undo()
        elif op == "redo":
            d.redo_depth = max(0, d.redo_depth - 1)
            d.session.redo()
        elif op == "reset":
            d.redo_depth = 0
            d.session.reset()
        else:
            raise PromptError(f"unknown operation {op!r}")
        self._paint(d)

    def draft_json(self) -> dict | None:
        d = self.draft
        if d is None:
            return None
        s = d.session
        step = s.history[-1] if s.history else None
        return {
            "axis": d.axis,
            "index": d.index,
            "label": d.label,
            "clicks": [list(c) for c in step.clicks] if step else [],
            "box": list(step.box) if step and step.box else None,
            "text": step.text if step else None,
            "can_undo": bool(s.history),
            "can_redo": d.redo_depth > 0,
        }

    # ---- import --------------------------------------------------------------------------------
    def import_labels(self, labels: ImageData, source: str) -> None:
        """Replace the label map by an existing one (same shape) to edit it; one object per label."""
        arr = np.asarray(labels.array)
        want = self.labels.shape[1:] if self.is_2d else self.labels.shape
        if arr.ndim == 3 and self.is_2d and arr.shape[-1] in (3, 4):
            arr = arr[..., 0]
        if tuple(arr.shape) != tuple(want):
            raise InputError(f"{source}: label map of shape {arr.shape} does not match the image {want}")
        if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0) or (arr.size and arr.max() > 65535):
            raise InputError(f"{source}: a label map needs integer labels in 0..65535")
        self.labels[...] = arr.reshape(self.labels.shape).astype(np.uint16)
        self.draft = None
        self.objects = []
        for v in np.unique(self.labels):
            if v:
                self.objects.append(ObjectInfo(int(v), f"label {int(v)}", palette_color(int(v))))
        self.active = self._new_object().label


PROMPT_KINDS = ("click", "box", "text", "scribble", "lasso")


def parse_prompt(kind: str, value) -> tuple[str, tuple | str]:
    """A prompt from the page: click (x, y, positive), box (x0, y0, x1, y1), text, scribble
    {points: [[x, y], ...], positive} or lasso {points: [[x, y], ...]} (a closed polygon)."""
    try:
        if kind == "click":
            return kind, (float(value[0]), float(value[1]), bool(value[2]))
        if kind == "box":
            x0, y0, x1, y1 = (float(v) for v in value)
            return kind, (x0, y0, x1, y1)
    except (TypeError, ValueError, IndexError):
        raise PromptError(f"a {kind} needs numbers: click [x, y, positive], box [x0, y0, x1, y1]") from None
    if kind == "text":
        text = str(value).strip()
        if not text:
            raise PromptError("the text prompt is empty")
        return kind, text[:200]
    if kind in ("scribble", "lasso"):
        if not isinstance(value, dict) or "points" not in value:
            raise PromptError(f"a {kind} needs {{points: [[x, y], ...]}}")
        return kind, (parse_stroke(value["points"], kind), bool(value.get("positive", True)))
    raise PromptError(f"unknown prompt kind {kind!r} ({', '.join(PROMPT_KINDS)})")


def apply_prompt(session, kind: str, value, prev: tuple, hw: tuple[int, int]):
    """Run one parsed prompt on a Session or VolumeSession (same predict/add_click API), given the plane's
    earlier prompts `prev` = (clicks, box, text): a click refines, a box or text replaces its own kind and
    keeps the rest, a scribble adds its clicks, a lasso sets the box (see imis.app.strokes); a scribble
    feeds the previous logits back where the object already has prompts here, as a click does."""
    clicks, box, text = prev
    if kind == "click":
        return session.add_click(*value)
    if kind == "box":
        return session.predict(clicks=clicks, box=value, text=text)
    if kind == "text":
        return session.predict(clicks=clicks, box=box, text=value)
    pts, positive = value
    if kind == "scribble":
        new = [c for c in scribble_clicks(pts, positive, hw) if c not in clicks]
        return session.predict(clicks=[*clicks, *new], box=box, text=text, mask=bool(clicks or box or text))
    lbox, inside = lasso_prompt(pts, hw)
    return session.predict(clicks=[*clicks, *inside], box=lbox, text=text)


def _parse_color(color) -> tuple[int, int, int]:
    if isinstance(color, str) and len(color) == 7 and color.startswith("#"):
        try:
            return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif isinstance(color, list | tuple) and len(color) == 3 and all(isinstance(c, int) for c in color):
        return tuple(max(0, min(255, c)) for c in color)  # type: ignore[return-value]
    raise PromptError(f"colour {color!r}: expected #rrggbb")
