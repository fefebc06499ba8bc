"""Each API worker's copy of the current catalogue: a :class:`SearchIndex` of one version.

The worker looks at the catalogue pointer (``feedloop:catalogue``, written by
:func:`feature_store.catalogue.write_catalogue`) at most every ``check_every_s``; when it
names a newer version, the worker reads that version's items (HSCAN, in chunks, so
Redis is never blocked by one large reply) and builds the new index in a thread, while
requests keep being answered by the previous index. The new index replaces the old
one in one assignment, so every search and every category filter uses one catalogue
version from start to end: a page never mixes two catalogues. Only the first request of
a worker waits for a build (there is nothing to answer from before).

The API process stays stateless as a service: every worker, on any machine, builds the
same index from Redis, so workers can be added or restarted freely.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from feature_store import catalogue
from serving.errors import BadInput
from serving.search_index import SearchIndex
from serving.store import FeedStore

CHECK_EVERY_S = 1.0
SCAN_COUNT = 2000
log = logging.getLogger(__name__)


def check_categories(categories: list[str], index: SearchIndex | None) -> None:
    """Raise :class:`BadInput` naming ``category`` when one is not in the current catalogue."""
    known = index.categories if index is not None else frozenset()
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise BadInput.one("category", f"unknown category {unknown[0]!r}; known: {', '.join(sorted(known)[:50])}")


async def read_docs(store: FeedStore, version: str) -> list[str]:
    """Every item document of catalogue ``version`` (HSCAN; an entry may come twice)."""
    docs: list[str] = []
    cursor = "0"
    while True:
        cursor, flat = await store.execute("HSCAN", catalogue.items_key(version), cursor, "COUNT", SCAN_COUNT)
        docs += flat[1::2]
        if cursor == "0":
            return docs


class Catalogues:
    """The worker's current :class:`SearchIndex`, rebuilt in the background on a new version."""

    def __init__(self, check_every_s: float = CHECK_EVERY_S, freeze_gc: bool = False) -> None:
        self.check_every_s = check_every_s
        self.freeze_gc = freeze_gc
        self.current: SearchIndex | None = None
        self.building: tuple[str, asyncio.Task] | None = None
        self.checked_at = -float("inf")

    async def get(self, store: FeedStore) -> SearchIndex | None:
        """The index to answer from now (None while no catalogue is published)."""
        now = time.monotonic()
        if self.current is not None and now - self.checked_at < self.check_every_s:
            return self.current
        self.checked_at = now
        version = await store.execute("GET", catalogue.pointer_key())
        if version is not None and (self.current is None or int(version) > int(self.current.version)):
            task = self._start(store, version)
            if self.current is None:
                await asyncio.shield(task)
        return self.current

    def _start(self, store: FeedStore, version: str) -> asyncio.Task:
        if self.building is not None and (self.building[0] == version or not self.building[1].done()):
            return self.building[1]  # one build at a time; a newer version is seen at the next check
        task = asyncio.ensure_future(self._build(store, version))
        # a failed background build is logged by _build; mark its exception retrieved (the first
        # request, which awaits its build, still gets it: a 503 when Redis failed)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.building = (version, task)
        return task

    async def _build(self, store: FeedStore, version: str) -> None:
        started = time.monotonic()
        try:
            docs = await read_docs(store, version)
            index = await asyncio.to_thread(SearchIndex.build, version, docs)
        except Exception:  # Redis down or the version expired: the next check tries again
            log.exception("building the search index of catalogue %s failed", version)
            self.building = None
            raise
        if self.current is None or int(version) > int(self.current.version):
            self.current = index
            if self.freeze_gc:
                # Hundreds of thousands of long-lived objects: out of the collector's scans, as the
                # app freezes what it builds at start (serving.app.app_from_settings). The replaced
                # index holds no cycles, so reference counting still frees it.
                gc.collect()
                gc.freeze()
        log.info("search index of catalogue %s: %d items in %.2fs", version, len(index), time.monotonic() - started)
