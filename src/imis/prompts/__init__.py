"""Prompt simulation shared by the benchmark and training: clicks, boxes, texts and prompt files.

Every random draw takes an explicit :class:`numpy.random.Generator`; coordinates are ``(x, y)`` pixels in the
mask's native frame.
"""

from imis.prompts.boxes import jittered_box, offset_box, tight_box
from imis.prompts.clicks import (
    Click,
    center_click,
    centroid_candidates,
    centroid_click,
    largest_component_click,
    ritm_click,
    uniform_click,
    uniform_error_click,
)
from imis.prompts.protocol_file import (
    dataset_fingerprint,
    generate_prompts,
    load_prompts,
    mask_checksum,
    prompt_rng,
    save_prompts,
)
from imis.prompts.text import DEFAULT_TEMPLATE, text_prompt

__all__ = [
    "DEFAULT_TEMPLATE",
    "Click",
    "center_click",
    "centroid_candidates",
    "centroid_click",
    "dataset_fingerprint",
    "generate_prompts",
    "jittered_box",
    "largest_component_click",
    "load_prompts",
    "mask_checksum",
    "offset_box",
    "prompt_rng",
    "ritm_click",
    "save_prompts",
    "text_prompt",
    "tight_box",
    "uniform_click",
    "uniform_error_click",
]
