"""What `imis segment` says about a result that is likely wrong, instead of passing it silently.

Each check gives one line (printed as ``imis: warning: ...`` on stderr; the exit code stays 0): a text
prompt outside the names the model was trained on (with the nearest trained names), an empty mask, and
a low predicted quality (the model's own IoU estimate below :data:`LOW_QUALITY`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LOW_QUALITY", "result_warnings", "text_prompt_warning"]

#: predicted IoU under which a mask is reported as doubtful (imis-lite's tight thalamus box on Colin27:
#: 0.64 for Dice 0.86; a box missing most of it: 0.46 for Dice 0.40; text 'foobar' on CT: 0.15)
LOW_QUALITY = 0.5


def text_prompt_warning(model_name: str, text: str | None) -> str | None:
    """The warning for a text prompt the model was not trained on (None if fine or unknown)."""
    if text is None:
        return None
    from imis.models.text_vocabulary import text_warning

    return text_warning(model_name, text)


def result_warnings(mask: np.ndarray, quality: float) -> list[str]:
    """Warnings about a predicted mask: empty, or of low predicted quality."""
    out = []
    if not np.asarray(mask).any():
        out.append("the predicted mask is empty: nothing was segmented")
    if math.isfinite(quality) and quality < LOW_QUALITY:
        out.append(
            f"predicted quality is low (IoU estimate {quality:.3f} < {LOW_QUALITY}): the mask is likely "
            "wrong; check it on --overlay, add clicks or a tighter box"
        )
    return out
