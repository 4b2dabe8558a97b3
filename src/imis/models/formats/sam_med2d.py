"""SAM-Med2D released checkpoint layout (``sam-med2d_b.pth``: ``{"model": state_dict, ...}``).

The official Segment Anything ViT-B layout at 256 px (``image_encoder.pos_embed`` 1x16x16x768, global
relative-position tables of 31 rows) plus an adapter per encoder block, which we name differently:

    image_encoder.blocks.{i}.Adapter.channel.0   -> image_encoder.blocks.{i}.adapter.channel_down
    image_encoder.blocks.{i}.Adapter.channel.2   -> image_encoder.blocks.{i}.adapter.channel_up
    image_encoder.blocks.{i}.Adapter.spatial.0   -> image_encoder.blocks.{i}.adapter.spatial_down
    image_encoder.blocks.{i}.Adapter.spatial.2   -> image_encoder.blocks.{i}.adapter.spatial_up
    image_encoder.blocks.{i}.Adapter.norm        -> image_encoder.blocks.{i}.adapter.norm

Everything else is SAM's (``formats.sam``: ``pixel_mean`` / ``pixel_std`` dropped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from imis.models.formats import sam
from imis.models.formats import unwrap as _unwrap

__all__ = ["to_foreign", "to_internal", "unwrap"]

_PARTS = {"channel.0": "channel_down", "channel.2": "channel_up", "spatial.0": "spatial_down"}
_PARTS.update({"spatial.2": "spatial_up", "norm": "norm"})
_FOREIGN = re.compile(r"^(image_encoder\.blocks\.\d+)\.Adapter\.(channel\.[02]|spatial\.[02]|norm)\.(\w+)$")
_INTERNAL = re.compile(r"^(image_encoder\.blocks\.\d+)\.adapter\.(\w+)\.(\w+)$")


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    return _unwrap(obj)


def to_internal(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM-Med2D names -> ours. Keys outside the layout pass through, for ``load_strict`` to report."""
    out = {}
    for key, value in sam.to_internal(state_dict).items():
        m = _FOREIGN.match(key)
        out[f"{m[1]}.adapter.{_PARTS[m[2]]}.{m[3]}" if m else key] = value
    return out


def to_foreign(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> SAM-Med2D's."""
    back = {v: k for k, v in _PARTS.items()}
    out = {}
    for key, value in sam.to_foreign(state_dict).items():
        m = _INTERNAL.match(key)
        out[f"{m[1]}.Adapter.{back[m[2]]}.{m[3]}" if m and m[2] in back else key] = value
    return out
