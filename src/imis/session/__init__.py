"""Session API: encode once, prompt many times (clicks, boxes, text, masks), undo/redo, commit objects.

`Session` works on one 2D image (or slice) at a time; `VolumeSession` on a whole volume (one label map,
propagation between slices); see imis.session.volume for its API.
"""

from imis.session.propagation import PropagationResult, PropagationRules
from imis.session.session import ObjectState, Session, Step
from imis.session.volume import ObjectInfo, VolumeSession

__all__ = [
    "ObjectInfo",
    "ObjectState",
    "PropagationResult",
    "PropagationRules",
    "Session",
    "Step",
    "VolumeSession",
]
