"""Records a rerun need not transform: a backfill with the same rules wrote them, for the same value.

A backfill that may skip unchanged records (see BatchWriter) asks, page by page and before
transforming, which records a run with the same rules migrated with the same value digest
(and companion digest). Those are counted from their ledger row and are not transformed,
staged or written again: their rows, ledger row and item rejects are in Postgres, committed
together. Their data rules' counters (Outcome.stats) are not counted again; the tally says how
many were `unchanged`. A rejected record is transformed again (a fix outside the rules, or a
reject a passing error caused, then shows), and so is a key this run has read before: the
lookup sees only what is committed, not the page in flight, which may hold that key's other
value. Reads Postgres on a connection of its own (the writer's is busy with the page before);
no KV request.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from kvmigrate.adapters.pg.state import LedgerProbe, any_item_rejects, still_written
from kvmigrate.engine.batch import record_digests
from kvmigrate.entities.base import Entity
from kvmigrate.model.records import RawRecord
from kvmigrate.model.seen import SeenKeys

Digests = tuple[str, str | None]


class UnchangedRecords:
    """Finds a page's records whose ledger row, written by one of `run_ids` (backfills under
    the same rules), stands for their current value."""

    def __init__(self, conn: psycopg.Connection, run_ids: Sequence[int], entities: Sequence[Entity]) -> None:
        self.conn = conn
        self.run_ids = list(run_ids)
        # A record of many rows comes in parts, and one that names other records is read for
        # those names (Family.refers): both are transformed every time.
        self.families = {(e.name, f.name) for e in entities for f in e.families if not (f.many_rows or f.refers)}
        self.read = SeenKeys()  # (key, field) of the records looked up so far
        # An unchanged record's item rejects were committed before this run (one it wrote
        # itself it has read before): none then, none to count
        self.items = any_item_rejects(conn)

    def find(self, records: Sequence[tuple[RawRecord, Entity]]
             ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], Digests]]:
        """(the unchanged records' (key, field) -> their item rejects, and the digests of every
        record probed, for its ledger row when it changed). One query, and one more for the
        item rejects of the unchanged records when the store has any."""
        eligible = [(record, entity) for record, entity in records
                    if not record.name_problem and (entity.name, record.family) in self.families]
        again = set(self.read.seen_before([(r.key, r.field) for r, _ in eligible]))  # read before: transformed
        probes: list[LedgerProbe] = []
        digests: dict[tuple[str, str], Digests] = {}
        for record, entity in eligible:
            if (record.key, record.field) in again:
                continue
            value, companion = digests[record.key, record.field] = record_digests(record)
            probes.append(LedgerProbe(record.key, record.field, entity.name, record.family, record.redis_type,
                                      value, companion))
        return still_written(self.conn, self.run_ids, probes, items=self.items), digests
