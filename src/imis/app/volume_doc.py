"""A volume in the app, on the VolumeSession: one label map, objects drawn on any slice of any view.

The VolumeSession owns the prompting, the draft object (a 3D mask with undo/redo across slices), the
propagation and the label map of committed objects; this adapter adds what the page needs: names,
colours and visibility, the active object's label before it is committed, and planes to show (the
committed labels with the draft painted where no committed object is, which is also what commit and
export keep). "Next object" and selecting another object commit the draft.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imis.app.document import (
    AXES,
    PLANE_AXES,
    Document,
    ObjectInfo,
    apply_prompt,
    palette_color,
    parse_prompt,
)
from imis.errors import InputError, PromptError
from imis.io import ImageData
from imis.session import VolumeSession


class VolumeDocument(Document):
    def __init__(self, doc_id: str, data: ImageData, model, name: str, cache_size: int = 8) -> None:
        super().__init__(doc_id, data, model, name)
        self.vs = VolumeSession(model, cache_size=cache_size)
        self.vs.open(data)
        self.committed = np.zeros(self.display.shape, dtype=np.uint16)
        self.redo_depth = 0
        self.last_prompt: tuple[str, int] | None = None

    # ---- planes --------------------------------------------------------------------------------
    def model_plane(self, axis: str, index: int) -> np.ndarray:
        return self.vs.slice_image(axis, index)

    def label_plane(self, axis: str, index: int) -> np.ndarray:
        axis, index = self.check_plane(axis, index)
        plane = self.committed[self._index(axis, index)].copy()
        plane[self.vs.plane(axis, index) & (plane == 0)] = self.active
        return plane

    def export_labels(self) -> np.ndarray:
        out = self.committed.copy()
        out[self.vs.object_mask & (out == 0)] = self.active
        return out

    def _refresh(self) -> None:
        self.committed = self.vs.label_map

    # ---- prompting -----------------------------------------------------------------------------
    def _slice_prompts(self, axis: str, index: int) -> tuple[tuple, tuple | None, str | None]:
        key = (AXES.index(axis), index)
        for a in reversed(self.vs.history):
            if a.kind == "predict" and (a.axis, a.index) == key:
                return a.clicks, a.box, a.text
        return (), None, None

    def prompt(self, axis: str, index: int, kind: str, value) -> float:
        axis, index = self.check_plane(axis, index)
        kind, value = parse_prompt(kind, value)
        self.vs.set_slice(axis, index)
        hw = tuple(self.display.shape[a] for a in PLANE_AXES[axis])
        pred = apply_prompt(self.vs, kind, value, self._slice_prompts(axis, index), hw)
        self.redo_depth = 0
        self.last_prompt = (axis, index)
        return float(pred.quality)

    def history_op(self, op: str) -> None:
        if op == "undo":
            self.redo_depth += self.vs.undo()
        elif op == "redo":
            self.redo_depth -= self.vs.redo()
        elif op == "reset":
            self.vs.reset()
            self.redo_depth = 0
        else:
            raise PromptError(f"unknown operation {op!r}")

    def propagate(
        self,
        axis: str,
        index: int,
        max_slices: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Fill the active object from (axis, index) through the volume, at most `max_slices` each way."""
        axis, index = self.check_plane(axis, index)
        self.vs.set_slice(axis, index)
        # the rules measured for how this slice was prompted (box or clicks), with the app's limit
        result = self.vs.propagate(progress=progress, max_slices=max_slices)
        self.redo_depth = 0
        return len(result.slices)

    def draft_json(self) -> dict | None:
        history = self.vs.history
        d = {"label": self.active, "can_undo": bool(history), "can_redo": self.redo_depth > 0}
        if self.last_prompt is None:
            return d | {"axis": None, "index": None, "clicks": [], "box": None, "text": None}
        axis, index = self.last_prompt
        clicks, box, text = self._slice_prompts(axis, index)
        return d | {
            "axis": axis,
            "index": index,
            "clicks": [list(c) for c in clicks],
            "box": list(box) if box else None,
            "text": text,
        }

    # ---- objects -------------------------------------------------------------------------------
    def _commit_draft(self) -> bool:
        """Commit the draft under the active label when it holds anything; False when it is empty."""
        if not self.vs.object_mask.any():
            self.vs.reset()
            return False
        self.vs.commit(label=self.active, name=self.object(self.active).name)
        self._refresh()
        self.redo_depth, self.last_prompt = 0, None
        return True

    def next_object(self, name: str | None = None) -> int:
        if not self._commit_draft():
            if name:
                self.object(self.active).name = name
            return self.active
        self.active = self._new_object(name).label
        return self.active

    def select(self, label: int) -> None:
        self.object(label)
        if label == self.active:
            return
        if not self._commit_draft():  # an empty object is dropped rather than kept in the list
            self.objects = [o for o in self.objects if o.label != self.active]
        self.vs.select(label)
        self._refresh()
        self.active = label
        self.redo_depth, self.last_prompt = 0, None

    def delete_object(self, label: int) -> None:
        obj = self.object(label)
        if label == self.active:
            self.vs.reset()
            self.redo_depth, self.last_prompt = 0, None
        else:
            self.vs.remove(label)
            self._refresh()
        self.objects.remove(obj)
        if label == self.active or not self.objects:
            self.active = self._new_object().label

    def import_labels(self, labels: ImageData, source: str) -> None:
        """Add the objects of an existing label map (same shape and geometry as the volume) to edit them;
        the object being drawn is committed first, and labels already in use are refused."""
        if labels.kind != "volume":
            raise InputError(f"{source}: a volume's label map must be a volume, not a 2D image")
        if not self._commit_draft():
            self.objects = [o for o in self.objects if o.label != self.active]
        try:
            self.vs.import_labels(labels)
        finally:
            self._refresh()
            known = {o.label for o in self.objects}
            for v in sorted(set(int(v) for v in np.unique(self.committed) if v) - known):
                self.objects.append(ObjectInfo(v, f"label {v}", palette_color(v)))
            self.objects.sort(key=lambda o: o.label)
            self.active = self._new_object().label
