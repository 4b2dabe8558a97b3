"""Users' documents kept by the server: bounded in number, expired when idle, one lock each.

The lock orders one user's requests (asyncio.Lock is first come, first served); the store evicts the
least recently used document when full, so many users cannot exhaust the machine's memory, and a
document idle for longer than the expiry is dropped. A page reload or a dropped connection finds its
document again by id until then.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from imis.app.document import Document
from imis.app.files import AppError


@dataclass
class Entry:
    doc: Document
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    job: dict | None = None  # progress of a running propagation


class SessionStore:
    def __init__(self, max_sessions: int = 16, ttl_s: float = 4 * 3600, on_evict: Callable | None = None):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._on_evict = on_evict

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(12)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sid: str) -> bool:
        return sid in self._items

    def documents(self) -> list[Document]:
        return [e.doc for e in self._items.values()]

    def add(self, doc: Document) -> Entry:
        self.expire()
        entry = Entry(doc)
        self._items[doc.id] = entry
        while len(self._items) > self.max_sessions:
            _, old = self._items.popitem(last=False)
            self._dropped(old)
        return entry

    def get(self, sid: str) -> Entry:
        self.expire()
        entry = self._items.get(sid)
        if entry is None:
            raise AppError(404, "this session has expired or does not exist; open the image again")
        entry.last_used = time.monotonic()
        self._items.move_to_end(sid)
        return entry

    def remove(self, sid: str) -> None:
        entry = self._items.pop(sid, None)
        if entry is not None:
            self._dropped(entry)

    def expire(self) -> None:
        now = time.monotonic()
        for sid in [
            s for s, e in self._items.items() if now - e.last_used > self.ttl_s and not e.lock.locked()
        ]:
            self._dropped(self._items.pop(sid))

    def _dropped(self, entry: Entry) -> None:
        if self._on_evict is not None:
            self._on_evict(entry.doc)
