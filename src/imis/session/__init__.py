"""Session API: encode once, prompt many times (clicks, boxes, text, masks), undo/redo, commit objects."""

from imis.session.session import ObjectState, Session, Step

__all__ = ["Session", "Step", "ObjectState"]
