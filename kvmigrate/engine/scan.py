"""The one SCAN loop of the phases that read the whole keyspace (backfill, verify, cleanup).

A SCAN cursor is only valid on the server process that returned it: a KV server that restarted
(a new run id in `INFO server`, a free command) may have come back without keys, or with a new
hash seed that makes the cursor skip some. So a scan resumes from a checkpoint only on the
server that wrote it, and checks the server's run id again after its pass (or after every page,
for a phase that deletes): on a restart it scans again from the start (`rescans`), or stops
with the phase's own error.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psycopg

from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.scanner import server_id
from kvmigrate.adapters.pg import state
from kvmigrate.model.errors import KvmigrateError

P = TypeVar("P")

__all__ = ["KeyspaceScan", "ScanPass", "fewer_collections", "resume_point", "server_id"]

#: The cyclic garbage collector's thresholds while a phase reads the keyspace: a page makes
#: tens of thousands of short-lived containers (records, rows, dicts), and at Python's default
#: (a collection every 700) the collector ran 1,600 times in a backfill of 100,000 `msg:*` keys,
#: each full collection walking every live object, and took 13% of its wall time.
PAGE_GC_THRESHOLDS = (50_000, 20, 10)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect cyclic garbage less often for the block (the records of a page are freed by
    reference counting as soon as it is written; few form cycles), then restore the caller's
    thresholds."""
    before = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(before, PAGE_GC_THRESHOLDS, strict=True)))
    try:
        yield
    finally:
        gc.set_threshold(*before)


def resume_point(kv: KvClient, conn: psycopg.Connection, name: str, *, fresh: bool) -> tuple[int, str | None]:
    """(the cursor to start from, the KV server's run id): the checkpoint `name` when it was
    written on this server process and `fresh` is false, else 0. Costs 1 INFO (free)."""
    server = server_id(kv)
    cursor = 0 if fresh else (state.get_checkpoint(conn, name, server=server) or 0)
    return cursor, server


@dataclass
class ScanPass(Generic[P]):
    """One pass over the keyspace: its pages from `cursor`, read on the server `server`."""

    cursor: int
    server: str | None
    pages: Iterator[P]


@dataclass
class KeyspaceScan(Generic[P]):
    """A SCAN of the keyspace that watches the KV server's run id.

    `pages(cursor)` reads the pages from a cursor (nothing is read from SCAN_DONE). With
    `each_page`, the run id is checked after every page (then `after_page` runs, e.g. to store a
    checkpoint), so a restart stops the scan at once; otherwise after the pass. A restart raises
    `restarted`, unless `rescans` passes from the start are left (counted in `restarts`).
    """

    kv: KvClient
    pages: Callable[[int], Iterable[P]]
    restarted: KvmigrateError
    cursor: int = 0
    server: str | None = None
    rescans: int = 0
    each_page: bool = False
    after_page: Callable[[P], None] | None = None
    restarts: int = field(default=0, init=False)

    def passes(self) -> Iterator[ScanPass[P]]:
        """Yield the passes (one, unless the server restarted and a rescan is left); the caller
        reads each whole before asking for the next. Costs 1 INFO per pass, or per page."""
        cursor, server = self.cursor, self.server
        while True:
            pages = () if cursor == state.SCAN_DONE else self.pages(cursor)
            yield ScanPass(cursor, server, self._watched(pages, server) if self.each_page else iter(pages))
            if self.each_page:
                return  # every page was checked as it was read
            now = server_id(self.kv)
            if now == server:
                return
            self.restarts += 1  # the pass may have skipped keys
            if self.restarts > self.rescans:
                raise self.restarted
            cursor, server = 0, now

    def _watched(self, pages: Iterable[P], server: str | None) -> Iterator[P]:
        for page in pages:
            yield page
            if server_id(self.kv) != server:
                raise self.restarted
            if self.after_page is not None:
                self.after_page(page)
