"""Prompt simulation shared by the benchmark and training (first version: tight boxes)."""

from imis.prompts.boxes import tight_box

__all__ = ["tight_box"]
