"""The interactive decode path: one prompt against a cached embedding, with the per-image half of the
decoder cached too.

In a SAM-style decoder the first two-way layer's image side (the embedding plus the no-mask dense
prompt, its token->image keys and values, its image->token queries) depends on the image only, not on
the clicks: :func:`imis.models.grid_decode.shared_image` computes it and
:func:`imis.models.grid_decode.decode_clicks` runs the rest of the transformer re-associated (the image
tokens multiplied by the few prompt tokens). A user clicks many times on one slice, so
:class:`SharedImageCache` keeps that per-image part for the few embeddings clicked last, and the
4x upscaling runs for the one output that is returned instead of all of them.

Clicks and boxes without a mask prompt leave the dense prompt at its "no mask" value and take the
cached path. With a mask prompt (a correction click feeding the previous logits back) the image side
holds that prompt's dense embedding: it is computed for the prompt (:func:`shared_for_mask`, not
cached), and the rest runs as above. Text prompts, and models other than a `PromptableSegmenter` with
the plain `MaskDecoder`, take `PromptableSegmenter.decode` (the tests compare both paths on every
registry model that takes this one).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

from imis.models.grid_decode import GridDecode, SharedImage, decode_clicks, shared_image
from imis.models.mask_decoder import MaskDecoder
from imis.models.segmenter import PromptableSegmenter

__all__ = ["SharedImageCache", "decode_one", "shared_for_mask", "supports_fast_decode"]


def supports_fast_decode(net: torch.nn.Module) -> bool:
    """Whether ``net`` is a SAM-layout segmenter whose first decoder layer ignores the token positions
    in its self-attention (the condition for its image side to be prompt-independent)."""
    if not isinstance(net, PromptableSegmenter) or type(net.mask_decoder) is not MaskDecoder:
        return False
    layers = net.mask_decoder.transformer.layers
    return len(layers) > 0 and bool(layers[0].skip_first_layer_pe)


class SharedImageCache:
    """Thread-safe LRU of :class:`SharedImage` keyed by the identity of an embedding's features tensor.

    A weak reference checks that the key still names the same tensor (an id can be reused once the
    tensor is freed). ``size`` entries of about 3.5x the embedding's memory each: a few, for the slice
    a user is clicking on and its neighbours, not the whole embedding cache of a volume session.
    """

    def __init__(self, size: int = 4) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._entries: OrderedDict[int, tuple[weakref.ref, SharedImage]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, net: torch.nn.Module, features: torch.Tensor) -> SharedImage:
        key = id(features)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is features:
                self._entries.move_to_end(key)
                return hit[1]
        shared = shared_image(net, features)  # outside the lock: other users' clicks go on meanwhile
        with self._lock:
            self._entries[key] = (weakref.ref(features), shared)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return shared

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def shared_for_mask(net: PromptableSegmenter, features: torch.Tensor, dense: torch.Tensor) -> SharedImage:
    """The image side for one prompt whose dense embedding (1, D, h, w) comes from a mask prompt.

    `shared_image` adds the no-mask embedding to the features it is given; giving it the features
    plus (dense - no-mask) makes its image tokens features + dense, as `MaskDecoder` forms them.
    """
    no_mask = net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(features.dtype)
    return shared_image(net, features + (dense.to(features.dtype) - no_mask))


def decode_one(
    net: PromptableSegmenter, shared: SharedImage, sparse: torch.Tensor, multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one prompt (sparse tokens (1, P, D)) -> (low-res logits (1, 1, 4h, 4w), IoU (1, 1)).

    ``multimask``: the best of the multimask outputs by predicted IoU (SAM's rule for a lone click),
    else the single-mask output; the same choice as `MaskDecoder` followed by an argmax.
    """
    state: GridDecode = decode_clicks(net, shared, sparse)
    iou = state.iou[0]  # (T,): the single-mask token, then the multimask ones
    out = 1 + int(torch.argmax(iou[1:])) if multimask else 0
    dec: MaskDecoder = net.mask_decoder
    hyper = dec.output_hypernetworks_mlps[out](state.tokens[:, out])  # (1, D/8)
    h, w = state.hw
    low_res = dec._upscale_and_project(state.keys, h, w, hyper[:, None])
    return low_res, iou[out].reshape(1, 1)
