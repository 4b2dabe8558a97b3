"""Text prompts from target names: the one place where a target name becomes the sentence a model's text
tower reads, for training (:mod:`imis.train.network`), inference (:mod:`imis.models.text.towers`) and the
benchmark's prompt files alike."""

from __future__ import annotations

from imis.errors import PromptError

DEFAULT_TEMPLATE = "A segmentation area of a {}."


def prompt_name(text: str, vocabulary=None) -> str:
    """The target name as IMIS-Net's text prompts spell it.

    A dataset label key or a known synonym ('kidney_right', 'Right-kidney') becomes the vocabulary's
    display name ('right kidney'), as the released model was trained; free text is kept, only
    lower-cased with '_'/'-' as spaces (an unknown name is embedded, never refused).
    """
    if not text or not text.strip():
        raise PromptError("text prompt is empty")
    if vocabulary is not None:
        target = vocabulary.resolve(text)
        if target.known:
            text = target.display
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def _check_template(template: str) -> None:
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}' field, got {template!r}")


def is_filled(text: str, template: str = DEFAULT_TEMPLATE) -> bool:
    """Whether ``text`` already is ``template`` filled with a name (a sentence recorded by
    :func:`text_prompt`), so that it is fed as it is rather than wrapped again."""
    _check_template(template)
    head, tail = template.split("{}")
    return len(text) > len(head) + len(tail) and text.startswith(head) and text.endswith(tail)


def text_prompt(name: str, template: str = DEFAULT_TEMPLATE, vocabulary=None) -> str:
    """The sentence a text tower reads for target ``name``: ``template`` filled with the name as the
    models were trained to read it (:func:`prompt_name`: the vocabulary's display name of a known
    target, e.g. ``"kidney_right"`` -> ``"A segmentation area of a right kidney."``).

    ``vocabulary``: None for the built-in one. A sentence that already fills ``template`` is returned
    unchanged, so a recorded prompt replays exactly (``text_prompt(text_prompt(x)) == text_prompt(x)``).
    """
    _check_template(template)
    name = str(name).strip()
    if not name:
        raise PromptError("text prompt needs a non-empty target name")
    if is_filled(name, template):
        return name
    if vocabulary is None:
        from imis.data.vocabulary import Vocabulary

        vocabulary = Vocabulary.builtin()
    return template.format(prompt_name(name, vocabulary))
