"""One bounded embedding cache for every user of the server, in front of the model.

The Session and VolumeSession encode through `model.encode`/`encode_batch`; the app hands them a
`CachingModel` that looks each image up by its content (a hash of its bytes, shape and dtype) in a
process-wide LRU, so a slice encoded in the background (neighbours of the one shown) is a hit when the
user reaches it, users on the same image share its embeddings, and the memory held by embeddings is
bounded however many users there are. Two requests for a slice being encoded wait for the one encoder run.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from imis.models.interactive import Embedding, InteractiveModel, Prediction, PromptSpec


class EmbeddingCache:
    """Thread-safe LRU of image embeddings keyed by name, with in-flight de-duplication."""

    def __init__(self, model: InteractiveModel, capacity: int = 48) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.model = model
        self.capacity = capacity
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.encodes = 0
        self.hits = 0

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: str, image: np.ndarray | Callable[[], np.ndarray]) -> Embedding:
        """The embedding of `key`, encoding `image` (an array or a function returning one) on a miss."""
        while True:
            with self._lock:
                emb = self._items.get(key)
                if emb is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return emb
                waiting = self._inflight.get(key)
                if waiting is None:
                    done = self._inflight[key] = threading.Event()
                    break
            waiting.wait()  # another thread encodes this slice: use its result
        try:
            arr = image() if callable(image) else image
            emb = self.model.encode(arr, key)
            with self._lock:
                self.encodes += 1
                self._items[key] = emb
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return emb
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            done.set()


def fingerprint(arr: np.ndarray) -> str:
    """The cache key of an image: a hash of its shape, dtype and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


class CachingModel:
    """Looks like an InteractiveModel to the Session; encodes through the shared cache by name."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache
        self.model = cache.model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def license(self) -> str:
        return self.model.license

    @property
    def prompt_types(self) -> frozenset[str]:
        return self.model.prompt_types

    def encode(self, image: np.ndarray, name: str = "image") -> Embedding:
        return self.cache.get(fingerprint(image), image)

    def encode_batch(self, images, name: str = "image") -> list[Embedding]:
        return [self.encode(im, name) for im in images]

    def decode(
        self, embedding: Embedding, prompts: PromptSpec, threshold: float = 0.0, **options
    ) -> Prediction:
        return self.model.decode(embedding, prompts, threshold, **options)
