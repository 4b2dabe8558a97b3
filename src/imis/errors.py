"""Exceptions shared by every stage.

Each carries a one-line, user-facing message that names the offending file or argument and the cause;
the CLI prints it and exits non-zero.
"""


class ImisError(Exception):
    """Base class of every error the project raises on purpose."""


class InputError(ImisError, ValueError):
    """A file, array or argument given by the user cannot be used (unreadable, wrong shape, NaN, ...)."""


class PromptError(ImisError, ValueError):
    """A prompt is invalid for the image (outside it, empty box) or unsupported by the model."""


class CheckpointError(ImisError, ValueError):
    """A checkpoint file does not match the expected layout (missing/unexpected keys, wrong shapes)."""


class ModelNotAvailableError(ImisError, LookupError):
    """A registry model is unknown or its weights are not available on this machine."""
