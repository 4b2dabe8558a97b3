"""The server's state and work: the model, the shared embedding cache, the users' documents, the threads.

The encoder and decoder never run on the event loop: prompts run in a small worker pool, background
encoding of the slices around the one shown in a single encoder thread, each user's requests one after
the other (the document's lock).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imis.app.document import AXES, Document, ImageDocument
from imis.app.embeddings import CachingModel, EmbeddingCache, fingerprint
from imis.app.files import AppError, open_path
from imis.app.store import Entry, SessionStore
from imis.app.volume_doc import VolumeDocument
from imis.errors import ImisError

log = logging.getLogger("imis.app")
PREFETCH_RADIUS = 2


@dataclass
class ServeConfig:
    data_dir: Path | None = None
    token: str | None = None
    max_upload_mb: float = 512
    model: str | None = None
    checkpoint: Path | None = None
    max_sessions: int = 16
    session_ttl_s: float = 4 * 3600
    cache_embeddings: int = 48
    workers: int = 2
    runtime: str = "torch fp32"  # the backend and precision the model runs at (shown in the page)


def pack(arr: np.ndarray) -> str:
    """A little-endian array, zlib-compressed, base64: what the page inflates with DecompressionStream."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(arr).astype("<u2").tobytes(), 1)).decode()


class Backend:
    def __init__(self, config: ServeConfig, model) -> None:
        self.config = config
        self.model = model
        self.cache = EmbeddingCache(model, config.cache_embeddings)
        self.caching_model = CachingModel(self.cache)
        self.store = SessionStore(config.max_sessions, config.session_ttl_s, self._evicted)
        # Prompts decode on one intra-op thread each (OpenMP's thread count is per thread): with several
        # users, parallelism across requests beats oversubscribed threads within one (2.2 s vs 0.25 s
        # per decode measured on a busy 2-core CPU); the encoder thread keeps torch's default.
        self.work_pool = ThreadPoolExecutor(
            max(1, config.workers),
            thread_name_prefix="imis-work",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        self.encoder_pool = ThreadPoolExecutor(1, thread_name_prefix="imis-encode")
        self._tmp = tempfile.TemporaryDirectory(prefix="imis-serve-")
        self.workdir = Path(self._tmp.name)

    @property
    def upload_limit(self) -> int:
        return int(self.config.max_upload_mb * 2**20)

    def close(self) -> None:
        self.encoder_pool.shutdown(wait=False, cancel_futures=True)
        self.work_pool.shutdown(wait=False, cancel_futures=True)
        self._tmp.cleanup()

    def _evicted(self, doc: Document) -> None:
        log.info("session %s (%s) closed or evicted", doc.id, doc.name)
        for folder in getattr(doc, "temp_dirs", []):
            shutil.rmtree(folder, ignore_errors=True)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.work_pool, fn, *args)

    # ---- documents -----------------------------------------------------------------------------
    async def open_document(self, path: Path, name: str) -> Entry:
        made: list[Path] = []

        def read():
            try:
                return open_path(path, self.upload_limit, self.workdir, made)
            except (AppError, ImisError):
                raise
            except Exception as exc:  # any reader failure is the file's fault: say why, never a 500
                raise AppError(400, f"{name}: cannot read the file: {type(exc).__name__}: {exc}") from None

        data = await self.run(read)
        kind = VolumeDocument if data.kind == "volume" else ImageDocument
        doc = await self.run(kind, self.store.new_id(), data, self.caching_model, name)
        doc.temp_dirs = made
        entry = self.store.add(doc)
        self.prefetch(doc, "z", doc.display.shape[0] // 2)
        return entry

    def doc_info(self, doc: Document) -> dict:
        geo = doc.data.geometry
        spacing = list(geo.spacing) if not doc.is_2d else [*geo.spacing, 1.0]
        return {
            "id": doc.id,
            "name": doc.name,
            "is_2d": doc.is_2d,
            "shape": list(doc.display.shape),  # (z, y, x)
            "spacing_xyz": [float(s) for s in spacing],
            "flips": view_flips(geo.direction_matrix if not doc.is_2d else None),
            "range": list(doc.range),
            "auto_window": list(doc.auto_window),
            "modality": "CT" if doc.range[0] < -500 else ("MR" if not doc.is_2d else "image"),
            "dicom_series": bool(doc.data.meta.get("files")),  # DICOM SEG export possible
        }

    def state(self, entry: Entry) -> dict:
        doc = entry.doc
        return {
            "doc": self.doc_info(doc),
            "objects": [o.to_json() for o in doc.objects],
            "active": doc.active,
            "draft": doc.draft_json(),
            "job": entry.job,
        }

    def plane_json(self, doc: Document, axis: str, index: int) -> dict:
        axis, index = doc.check_plane(axis, index)
        return {"axis": axis, "index": index, "labels": pack(doc.label_plane(axis, index))}

    # ---- background encoding -------------------------------------------------------------------
    def prefetch(self, doc: Document, axis: str, index: int) -> None:
        """Encode the slice shown and its neighbours in the encoder thread, nearest first."""
        doc.focus = (axis, index)
        n = doc.display.shape[AXES.index(axis)]
        order = [index] + [index + s * d for d in range(1, PREFETCH_RADIUS + 1) for s in (1, -1)]
        for k in order:
            if 0 <= k < n and doc.embed_key(axis, k) not in self.cache:
                self.encoder_pool.submit(self._encode_if_near, doc, axis, k)

    def _encode_if_near(self, doc: Document, axis: str, k: int) -> None:
        fa, fi = doc.focus
        if fa != axis or abs(fi - k) > PREFETCH_RADIUS or doc.id not in self.store:
            return  # the user has moved on (or left): do not spend the CPU on it
        try:
            t = time.perf_counter()
            plane = doc.model_plane(axis, k)
            self.cache.get(fingerprint(plane), plane)
            log.debug("encoded %s %s%d in %.2fs", doc.id, axis, k, time.perf_counter() - t)
        except Exception:  # a background failure must not kill the thread; the click will report it
            log.exception("background encoding failed")


def view_flips(direction: np.ndarray | None) -> dict:
    """Per view, whether to mirror columns/rows so that views read radiologically (patient's right on the
    left of the screen, anterior and superior up), from the LPS direction cosines of the array axes."""
    if direction is None:
        return {"z": [False, False]}
    # direction columns are the ITK axes (x, y, z) = array axes (2, 1, 0); sign of their dominant component
    sign, dom = {}, {}
    for itk_axis, arr_axis in ((0, 2), (1, 1), (2, 0)):
        col = direction[:, itk_axis]
        k = int(np.argmax(np.abs(col)))
        dom[arr_axis], sign[arr_axis] = k, bool(col[k] >= 0)

    def flip(arr_axis: int) -> bool:
        # screen right/down should run along +L (x) and +P (y), and along -S (z)
        return sign[arr_axis] != (dom[arr_axis] != 2)

    views = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}
    return {v: [flip(cols), flip(rows)] for v, (rows, cols) in views.items()}
