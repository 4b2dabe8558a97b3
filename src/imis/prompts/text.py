"""Text prompts from target names."""

from __future__ import annotations

DEFAULT_TEMPLATE = "A segmentation area of a {}."


def text_prompt(name: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text prompt for target ``name``, e.g. ``"A segmentation area of a liver."`` (IMIS-Net's template).

    The name is used as given (``"kidney_right"`` stays so); ``template`` must hold one ``{}`` field.
    """
    name = str(name).strip()
    if not name:
        raise ValueError("text prompt needs a non-empty target name")
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}' field, got {template!r}")
    return template.format(name)
