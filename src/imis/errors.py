"""Exceptions shared by every stage.

Each carries a one-line, user-facing message that names the offending file or argument and the cause;
the CLI prints it and exits non-zero.
"""


def one_line(message: str) -> str:
    """``message`` with its control characters escaped (a newline from a file name becomes ``\\n``)."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class ImisError(Exception):
    """Base class of every error the project raises on purpose. Its message is kept on one line: parts
    of it come from files (names, keys, values), and a newline there must not split it."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class InputError(ImisError, ValueError):
    """A file, array or argument given by the user cannot be used (unreadable, wrong shape, NaN, ...)."""


class PromptError(ImisError, ValueError):
    """A prompt is invalid for the image (outside it, empty box) or unsupported by the model."""


class CheckpointError(ImisError, ValueError):
    """A checkpoint file does not match the expected layout (missing/unexpected keys, wrong shapes)."""


class ModelNotAvailableError(ImisError, LookupError):
    """A registry model is unknown or its weights are not available on this machine."""
