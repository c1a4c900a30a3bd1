"""The page writer: rows, ledger, rejects and checkpoint of one batch in one Postgres transaction.
Shared by backfill and verify's repair. Writes to Postgres only; no KV request."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson
import psycopg

import kvmigrate
from kvmigrate import entities
from kvmigrate.adapters.pg import references, state
from kvmigrate.adapters.pg.loader import LoadStats, SourcedRow, TableLoader, required_columns
from kvmigrate.engine import batch as batch_module
from kvmigrate.engine.batch import Batch, RequiredCheck, table_specs
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.model import records as records_module
from kvmigrate.model.records import ContainerJson, RawRecord
from kvmigrate.model.seen import SeenKeys

log = logging.getLogger("kvmigrate")

#: Reject keys a writer remembers before it prunes on every page instead (memory bound).
MAX_TRACKED_REJECTS = 100_000


class BatchWriter:
    """Writes batches to Postgres: rows (users first), ledger, rejects, checkpoint, one
    transaction per batch. Shared by backfill and verify's repair.

    With `rules` (a fingerprint of the transformation rules, see `rules_fingerprint`), a record
    whose ledger row is identical to the one a run with the same rules committed (same value
    digest, same outcome) is not staged again: its rows are already in Postgres, committed in
    the same transaction as that ledger row. Its counts still come from the transformer. (A
    backfill finds most such records before transforming them: see engine.unchanged. What
    reaches this check is what that does not look up: lists that name messages, values
    loaded in parts.)
    """

    def __init__(self, conn: psycopg.Connection, run_id: int, *, rules: str | None = None,
                 skip_unchanged: bool = True) -> None:
        self.conn = conn
        self.run_id = run_id
        self.rules = rules if skip_unchanged else None
        # Message ids that lists refer to, kept in Postgres rather than in memory (a million
        # keys refer to about half a million ids): the run counts the dangling ones at its end.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS kvm_refs (id TEXT)")
        conn.execute("TRUNCATE kvm_refs")
        state.prepare_stages(conn)
        specs = table_specs(sorted(ENTITIES, key=lambda e: e.load_order))
        # Why Postgres checks every row's foreign keys itself, or None: pages check them (see
        # adapters.pg.references)
        self.row_checks = references.per_page_refusal(conn, list(specs.values()))
        log.info("foreign keys: %s", "checked once per page and table" if self.row_checks is None
                 else f"checked by Postgres for every row ({self.row_checks})")
        self.loaders = {name: TableLoader(conn, spec, per_transaction=True, sole_writer=True,
                                          lock_refs=self.row_checks is None) for name, spec in specs.items()}
        # the runs whose ledger rows count as written under these rules (no other run can add
        # one meanwhile: backfills hold the writer lock)
        self.rules_runs = state.rules_runs(conn, rules) if rules is not None else []
        # A ledger row the same as the one staged but written under other rules is written
        # again, with this run: a later run under these rules then finds it unchanged.
        self.rewrite_older: list[int] | None = self.rules_runs or None
        if not set(self.rules_runs) - {run_id}:
            self.rules = None  # nothing committed under these rules yet: no unchanged record to skip
        # Keys that may have a reject stored: those this writer stored one for, when the table
        # was empty at its start (None: any key may, so every page prunes its records' rejects)
        self.reject_keys: set[str] | None = None if state.any_rejects(conn) else set()
        # (key, field) this writer put in the ledger, when it started empty: a record it never
        # wrote can have no ledger row then, and is copied straight in (no stage, no upsert)
        self.ledger_keys: SeenKeys | None = SeenKeys() if state.ledger_empty(conn) else None
        conn.commit()

    def required(self) -> dict[str, RequiredCheck]:
        return {name: loader.missing_required for name, loader in self.loaders.items()}

    def write(self, batch: Batch, *, checkpoint: tuple[str, int] | None = None,
              server: str | None = None) -> dict[str, LoadStats]:
        """Load one batch in one transaction. Returns rows written per table."""
        try:
            return self._write(batch, checkpoint=checkpoint, server=server)
        except psycopg.errors.UniqueViolation as exc:
            if self.ledger_keys is None or exc.diag.table_name != "ledger":
                raise
            # A key got its ledger row elsewhere meanwhile (a verify vouching for a key new to
            # the ledger): the page rolled back; it and every later page upsert the ledger.
            self.ledger_keys = None
            return self._write(batch, checkpoint=checkpoint, server=server)

    def _write(self, batch: Batch, *, checkpoint: tuple[str, int] | None,
               server: str | None) -> dict[str, LoadStats]:
        out: dict[str, LoadStats] = {}
        # A transaction of its own (not a savepoint in one already open): its stages start empty
        fresh = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self.conn.transaction():
            if self.row_checks is None:
                references.skip_row_checks(self.conn)
            rows = batch.rows
            new, entries = self._new_to_ledger(batch.ledger)
            if entries or self.ledger_keys is None:
                state.stage_ledger(self.conn, self.run_id, entries, stage_empty=fresh)
            unchanged = self._unchanged(entries) if self.rules else set()
            if unchanged:
                rows = _without_unchanged(batch.rows, unchanged, {n: lo.spec.pk for n, lo in self.loaders.items()})
            for table, loader in self.loaders.items():  # each loads once in this transaction
                out[table] = loader.load(rows.get(table, []), stage_empty=fresh)
            # records that own the row named after them, with no row_origin row: their ledger row says so
            owned = {key for stats in out.values() for key in stats.key_owned}
            state.copy_ledger(self.conn, self.run_id, new, owns_row=owned)
            if entries:
                staged_owners = owned.intersection(e.key for e in entries if not e.field)
                if staged_owners:
                    state.stage_owners(self.conn, staged_owners)
                state.apply_ledger(self.conn, rules_runs=self.rewrite_older)
            records = [r for r in batch.records if r not in unchanged]
            rejects = [r for r in batch.rejects if (r.key, r.field.partition("#")[0]) not in unchanged]
            merged = merged_entries(out)
            prune = self.reject_keys is None or any(k in self.reject_keys for k, _ in records)
            self._note_rejects([r.key for r in rejects] + [m.key for m in merged if m.message is not None])
            state.write_rejects(self.conn, self.run_id, records, rejects, prune=prune, stage_empty=fresh)
            state.write_merged(self.conn, self.run_id, merged)
            if batch.refs:
                with self.conn.cursor().copy("COPY kvm_refs (id) FROM STDIN") as cp:
                    for ref in batch.refs:
                        cp.write_row((ref,))
            if checkpoint:
                state.set_checkpoint(self.conn, checkpoint[0], checkpoint[1], self.run_id, server=server)
        return out

    def dangling_refs(self) -> int:
        """How many distinct message ids referred to by the batches written have no message
        row (a `msg:{id}` the weekly clean-up deleted). Read-only."""
        row = self.conn.execute("SELECT count(*) FROM (SELECT DISTINCT id FROM kvm_refs) r"
                                " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.id)").fetchone()
        return int(row[0]) if row else 0

    def _new_to_ledger(self, entries: Sequence[state.LedgerEntry]
                       ) -> tuple[list[state.LedgerEntry], list[state.LedgerEntry]]:
        """(entries certainly new to the ledger, one per key and field; the others, to upsert).
        They are noted as written before they are: a page that rolls back leaves them to the
        upsert, which costs more but finds the same."""
        if self.ledger_keys is None:
            return [], list(entries)
        names = [(e.key, e.field) for e in entries]
        before = set(self.ledger_keys.seen_before(names))
        new = {name: e for name, e in zip(names, entries, strict=True) if name not in before}  # a key read twice: its last reading
        return list(new.values()), [e for name, e in zip(names, entries, strict=True) if name in before]

    def _unchanged(self, entries: Sequence[state.LedgerEntry]) -> set[tuple[str, str]]:
        """(key, field) of the staged entries whose ledger row, written under the same rules, is
        identical; they leave the ledger stage."""
        if not entries:
            return set()
        changed = state.unstage_unchanged(self.conn, self.rules_runs)
        return {(e.key, e.field) for e in entries} - changed

    def _note_rejects(self, keys: Sequence[str]) -> None:
        """Remember keys that get a reject (before it is written: a failed page only makes
        later pages prune more than they need)."""
        if self.reject_keys is None:
            return
        self.reject_keys.update(keys)
        if len(self.reject_keys) > MAX_TRACKED_REJECTS:
            self.reject_keys = None  # a store this broken prunes every page instead

    def load_records(self, records: Sequence[tuple[RawRecord, Entity]]) -> int:
        """Transform and load specific records through the normal path. Returns rows written."""
        batch = Batch()
        for record, entity in records:
            batch.add_outcome(entity, record, entity.transform(record), self.required())
        return sum(s.written for s in self.write(batch).values())


def merged_entries(loaded: Mapping[str, LoadStats]) -> list[state.MergedEntry]:
    """The ledger/rejects marks of the merges a load made: every source merged away into a row
    of several keys (with its original value), and the row's other sources (marks cleared)."""
    out: list[state.MergedEntry] = []
    specs = table_specs(ENTITIES)
    for table, stats in loaded.items():
        entity = next((e.name for e in ENTITIES if e.tables and e.tables[0].name == table), table)
        for m in stats.merges:
            if not m.reports:
                continue
            owner = m.row
            into = owner.source_key + (f" field {owner.source_field!r}" if owner.source_field else "")
            pk = owner.values.get(specs[table].pk) if table in specs else None
            for src in m.merged_away:
                where = src.source_key + (f" field {src.source_field!r}" if src.source_field else "")
                message = f"{where}: merged into {table} row {pk!r} with {into} ({m.rule})"
                out.append(state.MergedEntry(src.source_key, src.source_field, entity, message,
                                             raw_value(src.meta.get("raw"))))
            out.extend(state.MergedEntry(s.source_key, s.source_field, entity, None) for s in (owner, *m.kept))
    return out


def raw_value(raw: object) -> bytes | str | None:
    """A source's original value as its meta keeps it (`{"text": …}` for a string or hash
    field, `{"hash": [[field, value], …]}` for a hash), in the rejects table's form."""
    if not isinstance(raw, dict):
        return None
    if "hash" in raw:
        return ContainerJson(orjson.dumps(raw["hash"]).decode())
    text = raw.get("text")
    return text if isinstance(text, str) else None


def _without_unchanged(rows: dict[str, list[SourcedRow]], unchanged: set[tuple[str, str]],
                       pks: dict[str, str]) -> dict[str, list[SourcedRow]]:
    """Drop the rows of unchanged records, except where a changed record of the same batch
    produces the same primary key (so the batch still merges those sources as a whole)."""
    out: dict[str, list[SourcedRow]] = {}
    for table, table_rows in rows.items():
        pk = pks.get(table)
        touched = {r.values[pk] for r in table_rows if (r.source_key, r.source_field) not in unchanged} if pk else set()
        out[table] = [r for r in table_rows
                      if (r.source_key, r.source_field) not in unchanged or (pk and r.values[pk] in touched)]
    return out


def rules_fingerprint(conn: psycopg.Connection) -> str:
    """A digest of the transformation rules: the entity modules, the module that turns their
    outcomes into rows, ledger rows and rejects (engine.batch) with the records it reads
    (model.records), kvmigrate's version and the target tables' required (NOT NULL) columns,
    which decide whether a row is rejected.

    Backfill skips a record (transforming or re-staging it) only when its ledger row was
    written under the same fingerprint, so new rules re-apply every row.
    """
    h = hashlib.blake2b(kvmigrate.__version__.encode(), digest_size=12)
    specs = table_specs(ENTITIES)
    h.update(",".join(required_columns(conn, list(specs.values()))).encode())
    rules = [*sorted(Path(entities.__file__).parent.glob("*.py")), Path(batch_module.__file__),
             Path(records_module.__file__)]
    for path in rules:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
