"""kvmigrate's own records in Postgres: runs, the ledger, rejects, checkpoints, KV spend.

Every function takes an open connection and runs in the caller's transaction unless it says
otherwise, so a batch's data, ledger and checkpoint commit together.
"""

from __future__ import annotations

import base64
import getpass
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from kvmigrate.adapters.kv.scanner import storable_name
from kvmigrate.adapters.pg.arrays import text_array
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import KvmigrateError
from kvmigrate.model.masking import mask_text
from kvmigrate.model.printable import printable_tree
from kvmigrate.model.records import ContainerJson


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see kvmigrate.model.records
class LedgerEntry:
    key: str
    field: str
    entity: str
    family: str
    redis_type: str
    value_hash: str | None
    status: str  # migrated | rejected | kept | unknown
    reason: str | None
    rows: int
    #: Digest of the companion key read with the record (see schema 006), else None.
    companion_hash: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class RejectEntry:
    key: str
    field: str
    entity: str
    code: str
    message: str
    raw: bytes | str | None


def start_run(conn: psycopg.Connection, command: str, *, dry_run: bool, options: dict[str, Any]) -> int:
    """Insert a `running` row in kvmigrate.runs and commit it. Returns the run id."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO kvmigrate.runs (command, dry_run, options, os_user, host)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (command, dry_run, Jsonb(options), _user(), socket.gethostname()),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish_run(conn: psycopg.Connection, run_id: int, *, status: str, budget: RequestBudget,
               result: dict[str, Any]) -> None:
    """Close a run (ok/stopped/failed) and add its KV spend to today's tally; commits."""
    with conn.transaction():
        conn.execute(
            "UPDATE kvmigrate.runs SET status = %s, finished_at = now(), kv_requests = %s, result = %s"
            " WHERE id = %s",
            (status, budget.spent, Jsonb(printable_tree(result)), run_id),
        )
        record_kv_spend(conn, budget)


def close_run(conn: psycopg.Connection, run_id: int, *, status: str, budget: RequestBudget,
              result: dict[str, Any], error: BaseException | None = None, pg_url: str | None = None) -> bool:
    """Close a run that may have failed, best effort: on `conn` (rolled back first), or, when
    that connection is gone, on a new one to `pg_url`. A failed run keeps its error (masked) as
    `result.error`, so `kvmigrate.runs` says why it stopped. Returns whether the row was closed."""
    if error is not None:
        message = error.message if isinstance(error, KvmigrateError) else f"{type(error).__name__}: {error}"
        result = {**result, "error": mask_text(str(message) or type(error).__name__)}
    try:
        conn.rollback()
        finish_run(conn, run_id, status=status, budget=budget, result=result)
        return True
    except psycopg.Error:
        if pg_url is None:
            return False
    try:  # the run's own connection failed: one more, short, on a fresh one
        with psycopg.connect(pg_url, connect_timeout=5, autocommit=True, application_name="kvmigrate") as fresh:
            finish_run(fresh, run_id, status=status, budget=budget, result=result)
        return True
    except psycopg.Error:
        return False  # Postgres is unreachable: the row stays "running", and `status` lists it


def record_kv_spend(conn: psycopg.Connection, budget: RequestBudget, *, day: date | None = None) -> None:
    """Add the budget's commands to kvmigrate.kv_requests for the (UTC) day."""
    today = day or datetime.now(timezone.utc).date()
    by = [(today, cmd, phase, n) for (phase, cmd), n in budget.by_phase_command.items() if n]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kvmigrate.kv_requests (day, command, phase, n) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (day, command, phase) DO UPDATE SET n = kv_requests.n + EXCLUDED.n",
            by,
        )


def kv_spent_today(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM kvmigrate.kv_requests WHERE day = (now() AT TIME ZONE 'UTC')::date"
    ).fetchone()
    return int(row[0]) if row else 0


#: The cursor stored once a pass has read its last page (SCAN's own end cursor, 0, would read
#: as "start over"): a run stopped before it finished up resumes with nothing left to scan.
SCAN_DONE = -1


def get_checkpoint(conn: psycopg.Connection, name: str, *, server: str | None = None) -> int | None:
    """The SCAN cursor to resume from (SCAN_DONE: the pass is complete), or None. A cursor means
    nothing to another server process (a restarted KV picks a new hash seed), so when `server`
    (the KV's run id now) differs from the one stored, there is nothing to resume: start over."""
    row = conn.execute("SELECT cursor FROM kvmigrate.checkpoints WHERE name = %s", (name,)).fetchone()
    if not row:
        return None
    cursor, _, stored = str(row[0]).partition("@")
    if server and stored and stored != server:
        return None
    return int(cursor)


def set_checkpoint(conn: psycopg.Connection, name: str, cursor: int, run_id: int, *,
                   server: str | None = None) -> None:
    """Store where a scan resumes, with the KV server process (run id) the cursor belongs to."""
    conn.execute(
        "INSERT INTO kvmigrate.checkpoints (name, cursor, run_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET cursor = EXCLUDED.cursor, run_id = EXCLUDED.run_id, updated_at = now()",
        (name, f"{cursor}@{server}" if server else str(cursor), run_id),
    )


def clear_checkpoint(conn: psycopg.Connection, name: str) -> None:
    conn.execute("DELETE FROM kvmigrate.checkpoints WHERE name = %s", (name,))


def rules_runs(conn: psycopg.Connection, rules: str) -> list[int]:
    """Ids of the backfills whose options carry this rules fingerprint. Read-only."""
    return [int(r) for (r,) in conn.execute(
        "SELECT id FROM kvmigrate.runs WHERE command = 'backfill' AND options->>'rules' = %s", (rules,)).fetchall()]


# Emptied at every commit (each page is staged and upserted in one transaction), which is
# far cheaper than a TRUNCATE per page; the DELETE before staging empties only what this same
# transaction staged before.
_LEDGER_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS kvm_stage_ledger (LIKE kvmigrate.ledger INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS kvm_stage_rejects (LIKE kvmigrate.rejects INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
"""


_LEDGER_COLUMNS = ("key", "field", "entity", "family", "redis_type", "value_hash", "status", "reason", "rows",
                   "run_id", "companion_hash", "owns_row")


def prepare_stages(conn: psycopg.Connection) -> None:
    """Create this session's ledger and rejects stages (temporary, emptied at every commit)."""
    conn.execute(_LEDGER_STAGE)


def stage_ledger(conn: psycopg.Connection, run_id: int, entries: Sequence[LedgerEntry], *,
                 stage_empty: bool = False) -> None:
    """COPY a batch's ledger rows into this session's stage (see `prepare_stages`), in the
    caller's transaction; `apply_ledger` writes them. `stage_empty`: the caller's transaction
    has not staged any yet (the stage is emptied at every commit and rollback), so no
    statement empties it."""
    if not stage_empty:
        conn.execute("DELETE FROM kvm_stage_ledger")
    if not entries:
        return
    _copy_entries(conn, "kvm_stage_ledger", run_id, entries)


def ledger_empty(conn: psycopg.Connection) -> bool:
    """Whether kvmigrate.ledger holds no row. Read-only."""
    row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM kvmigrate.ledger)").fetchone()
    return bool(row and row[0])


def copy_ledger(conn: psycopg.Connection, run_id: int, entries: Sequence[LedgerEntry], *,
                owns_row: Collection[str] = ()) -> None:
    """COPY ledger rows straight into kvmigrate.ledger, in the caller's transaction: for keys
    the caller knows have no row yet (one per key and field). A key that has one fails the COPY
    with a UniqueViolation (and the transaction with it); `stage_ledger` + `apply_ledger`
    upsert instead. `owns_row`: the keys whose (whole-key) row says `owns_row` (see
    adapters.pg.owners)."""
    if entries:
        _copy_entries(conn, "kvmigrate.ledger", run_id, entries, owns_row)


def stage_owners(conn: psycopg.Connection, keys: Collection[str]) -> None:
    """Mark the staged ledger rows of these keys (whole keys) `owns_row`, for `apply_ledger`."""
    conn.execute("UPDATE kvm_stage_ledger SET owns_row = true WHERE field = '' AND key = ANY(%s::text[])",
                 (text_array(sorted(keys)),))


def _copy_entries(conn: psycopg.Connection, table: str, run_id: int, entries: Sequence[LedgerEntry],
                  owns_row: Collection[str] = ()) -> None:
    """COPY ledger entries, as rows written by `run_id`, into `table` (the ledger or its stage)."""
    with conn.cursor().copy(f"COPY {table} ({', '.join(_LEDGER_COLUMNS)}) FROM STDIN") as cp:
        for e in entries:
            cp.write_row((e.key, e.field, e.entity, e.family, e.redis_type, e.value_hash, e.status,
                          e.reason, e.rows, run_id, e.companion_hash, e.key in owns_row and not e.field))


def unstage_unchanged(conn: psycopg.Connection, run_ids: Sequence[int]) -> set[tuple[str, str]]:
    """Drop from the ledger stage every row identical to the ledger's row for its record when
    one of `run_ids` wrote it (a source merged away carries reason `merged` there, which its own
    record does not say); returns the (key, field) of the staged rows left: the changed ones.
    One primary-key probe per staged row; only the changed records travel back."""
    conn.execute(
        "DELETE FROM kvm_stage_ledger WHERE ctid = ANY(ARRAY(SELECT s.ctid FROM kvm_stage_ledger s"
        # LATERAL … LIMIT 1: one probe per row; a join lets the planner hash the whole ledger
        " CROSS JOIN LATERAL (SELECT * FROM kvmigrate.ledger l WHERE l.key = s.key AND l.field = s.field LIMIT 1) l"
        " WHERE l.run_id = ANY(%s::bigint[])"
        " AND (l.entity, l.family, l.redis_type, l.value_hash, l.status, l.rows, l.companion_hash)"
        " IS NOT DISTINCT FROM (s.entity, s.family, s.redis_type, s.value_hash, s.status, s.rows, s.companion_hash)"
        " AND (l.reason IS NOT DISTINCT FROM s.reason OR l.reason = 'merged')))", (list(run_ids),))
    return {(k, f) for k, f in conn.execute("SELECT key, field FROM kvm_stage_ledger").fetchall()}


@dataclass(frozen=True, slots=True)
class LedgerProbe:
    """What a record read now would put in the ledger's identity columns (see `still_written`)."""

    key: str
    field: str
    entity: str
    family: str
    redis_type: str
    value_hash: str
    companion_hash: str | None


def still_written(conn: psycopg.Connection, run_ids: Sequence[int], probes: Sequence[LedgerProbe], *,
                  items: bool = True) -> dict[tuple[str, str], int]:
    """(key, field) -> item rejects it has, of the probed records migrated by a ledger row one
    of `run_ids` wrote for the same entity, family, Redis type, value digest and companion
    digest: under the same rules their rows, rejects and ledger row are in Postgres already.
    (A rejected record is left out: transforming it again is what shows it fixed.) Read-only;
    one primary-key probe per record, and, unless `items` is False (the caller knows there are
    no item rejects), one read of the found keys' item rejects."""
    if not probes or not run_ids:
        return {}
    columns = ("key", "field", "entity", "family", "redis_type", "value_hash", "companion_hash")
    found = conn.execute(
        "SELECT l.key, l.field"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        "  AS p(key, field, entity, family, redis_type, value_hash, companion_hash)"
        # LATERAL … LIMIT 1: one probe per record; a join lets the planner hash the whole ledger
        " CROSS JOIN LATERAL (SELECT * FROM kvmigrate.ledger l WHERE l.key = p.key AND l.field = p.field LIMIT 1) l"
        " WHERE l.run_id = ANY(%s::bigint[]) AND l.status = 'migrated'"
        " AND (l.entity, l.family, l.redis_type, l.value_hash, coalesce(l.companion_hash, ''))"
        " = (p.entity, p.family, p.redis_type, p.value_hash, p.companion_hash)",
        (*(text_array([getattr(p, name) or "" for p in probes]) for name in columns), list(run_ids)),
    ).fetchall()
    out: dict[tuple[str, str], int] = {(key, field): 0 for key, field in found}
    if items and out:
        # an item reject's field is the record's field, "#", and the item's label (see Batch)
        for key, field, n in conn.execute(
                "SELECT key, split_part(field, '#', 1), count(*) FROM kvmigrate.rejects"
                " WHERE key = ANY(%s::text[]) AND strpos(field, '#') > 0 GROUP BY 1, 2",
                (text_array(sorted({k for k, _ in out})),)).fetchall():
            if (key, field) in out:
                out[key, field] = int(n)
    return out


def any_item_rejects(conn: psycopg.Connection) -> bool:
    """Whether kvmigrate.rejects holds an item reject (a field with "#"). Read-only."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM kvmigrate.rejects WHERE strpos(field, '#') > 0)").fetchone()
    return bool(row and row[0])


def apply_ledger(conn: psycopg.Connection, *, rules_runs: Sequence[int] | None = None) -> int:
    """Upsert the staged ledger rows; rows whose hash/status did not change are not rewritten,
    unless `rules_runs` is given and none of those runs wrote them (so the row says it holds
    under the current rules). In the caller's transaction. Returns the rows written."""
    cur = conn.execute(
        "INSERT INTO kvmigrate.ledger (key, field, entity, family, redis_type, value_hash, status, reason, rows, run_id,"
        " companion_hash, owns_row) SELECT DISTINCT ON (key, field) key, field, entity, family, redis_type, value_hash,"
        " status, reason, rows, run_id, companion_hash, owns_row FROM kvm_stage_ledger ORDER BY key, field"
        " ON CONFLICT (key, field) DO UPDATE SET entity = EXCLUDED.entity, family = EXCLUDED.family,"
        " redis_type = EXCLUDED.redis_type, value_hash = EXCLUDED.value_hash, status = EXCLUDED.status,"
        " reason = EXCLUDED.reason, rows = EXCLUDED.rows, run_id = EXCLUDED.run_id,"
        " companion_hash = EXCLUDED.companion_hash, owns_row = ledger.owns_row OR EXCLUDED.owns_row, updated_at = now()"
        " WHERE (ledger.entity, ledger.family, ledger.redis_type, ledger.value_hash, ledger.status, ledger.reason,"
        " ledger.rows, ledger.companion_hash) IS DISTINCT FROM (EXCLUDED.entity, EXCLUDED.family, EXCLUDED.redis_type,"
        " EXCLUDED.value_hash, EXCLUDED.status, EXCLUDED.reason, EXCLUDED.rows, EXCLUDED.companion_hash)"
        " OR EXCLUDED.owns_row AND NOT ledger.owns_row"
        " OR NOT coalesce(ledger.run_id = ANY(%s::bigint[]), true)",  # no runs given: NULL, so true
        (None if rules_runs is None else list(rules_runs),),
    )
    return cur.rowcount


def encode_raw(raw: bytes | str | None) -> tuple[str | None, str]:
    """Store a raw value losslessly: UTF-8 text when it decodes (and has no NUL), else base64;
    a container as its lossless JSON (see `raw_bytes`)."""
    if raw is None:
        return None, "utf8"
    if isinstance(raw, ContainerJson):
        return str(raw), "json"
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")
        if "\x00" not in text:
            return text, "utf8"
    except UnicodeDecodeError:
        pass
    return base64.b64encode(raw).decode("ascii"), "base64"


def any_rejects(conn: psycopg.Connection) -> bool:
    """Whether kvmigrate.rejects holds any row. Read-only."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM kvmigrate.rejects)").fetchone()
    return bool(row and row[0])


def write_rejects(conn: psycopg.Connection, run_id: int, keys: Sequence[tuple[str, str]],
                  rejects: Sequence[RejectEntry], *, prune: bool = True, stage_empty: bool = False) -> None:
    """Replace the rejects of the given records (key, field) with `rejects`. An item reject
    inside a container record is stored with field `<record field>#<item label>`. In the
    caller's transaction, on a session whose stages `prepare_stages` made. `prune=False`: the
    caller knows none of these records has a reject stored, so there is nothing to drop.
    `stage_empty`: the caller's transaction has not staged rejects yet (see `stage_ledger`)."""
    if not keys or not (rejects or prune):
        return
    if not stage_empty:
        conn.execute("DELETE FROM kvm_stage_rejects")
    if rejects:
        with conn.cursor().copy(
            "COPY kvm_stage_rejects (key, field, entity, reason_code, message, raw_value, raw_encoding, run_id)"
            " FROM STDIN"
        ) as cp:
            for r in rejects:
                value, encoding = encode_raw(r.raw)
                cp.write_row((r.key, r.field, r.entity, r.code, r.message, value, encoding, run_id))
    if prune:  # drop rejects of these records that no longer apply (the value was fixed, or the item moved)
        conn.execute(
            "DELETE FROM kvmigrate.rejects r USING unnest(%s::text[], %s::text[]) AS b(key, field)"
            " WHERE r.key = ANY(%s::text[]) AND r.key = b.key"
            " AND (r.field = b.field OR left(r.field, length(b.field) + 1) = b.field || '#')"
            " AND NOT EXISTS (SELECT 1 FROM kvm_stage_rejects s WHERE s.key = r.key AND s.field = r.field)",
            key_lists(keys),
        )
    if not rejects:
        return
    conn.execute(
        "INSERT INTO kvmigrate.rejects (key, field, entity, reason_code, message, raw_value, raw_encoding, run_id)"
        " SELECT DISTINCT ON (key, field) key, field, entity, reason_code, message, raw_value, raw_encoding, run_id"
        " FROM kvm_stage_rejects ORDER BY key, field"
        " ON CONFLICT (key, field) DO UPDATE SET reason_code = EXCLUDED.reason_code, message = EXCLUDED.message,"
        " raw_value = EXCLUDED.raw_value, raw_encoding = EXCLUDED.raw_encoding, entity = EXCLUDED.entity"
        " WHERE (rejects.reason_code, rejects.message, rejects.raw_value)"
        " IS DISTINCT FROM (EXCLUDED.reason_code, EXCLUDED.message, EXCLUDED.raw_value)"
    )


@dataclass(frozen=True, slots=True)
class MergedEntry:
    """A source merged away into a row built from several keys (`merged` in the ledger's
    reason and in rejects, with its original value), or, with `message` None, a source of such
    a row that is no longer merged away (its `merged` marks are cleared)."""

    key: str
    field: str
    entity: str
    message: str | None
    raw: bytes | str | None = None


def write_merged(conn: psycopg.Connection, run_id: int, entries: Sequence[MergedEntry]) -> None:
    """Mark merged-away sources `merged` (ledger reason, and a reject keeping the original value)
    and clear the marks of sources that no longer are. In the caller's transaction; writes
    only rows that change."""
    if not entries:
        return
    away = [e for e in entries if e.message is not None]
    kept = [e for e in entries if e.message is None]
    if kept:
        pairs = key_lists([(e.key, e.field) for e in kept])
        conn.execute("DELETE FROM kvmigrate.rejects r USING unnest(%s::text[], %s::text[]) AS b(key, field)"
                     " WHERE r.key = ANY(%s::text[]) AND r.key = b.key AND r.field = b.field"
                     " AND r.reason_code = 'merged'", pairs)
        conn.execute("UPDATE kvmigrate.ledger l SET reason = NULL FROM unnest(%s::text[], %s::text[]) AS b(key, field)"
                     " WHERE l.key = ANY(%s::text[]) AND l.key = b.key AND l.field = b.field"
                     " AND l.reason = 'merged'", pairs)
    if not away:
        return
    conn.execute("UPDATE kvmigrate.ledger l SET reason = 'merged' FROM unnest(%s::text[], %s::text[]) AS b(key, field)"
                 " WHERE l.key = ANY(%s::text[]) AND l.key = b.key AND l.field = b.field AND l.status = 'migrated'"
                 " AND l.reason IS DISTINCT FROM 'merged'", key_lists([(e.key, e.field) for e in away]))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kvmigrate.rejects (key, field, entity, reason_code, message, raw_value, raw_encoding, run_id)"
            " VALUES (%s, %s, %s, 'merged', %s, %s, %s, %s) ON CONFLICT (key, field) DO UPDATE SET"
            " reason_code = EXCLUDED.reason_code, message = EXCLUDED.message, raw_value = EXCLUDED.raw_value,"
            " raw_encoding = EXCLUDED.raw_encoding, entity = EXCLUDED.entity"
            " WHERE (rejects.reason_code, rejects.message, rejects.raw_value)"
            " IS DISTINCT FROM (EXCLUDED.reason_code, EXCLUDED.message, EXCLUDED.raw_value)",
            [(e.key, e.field, e.entity, e.message, *encode_raw(e.raw), run_id) for e in away])


def key_lists(records: Sequence[tuple[str, str]]) -> tuple[str, str, str]:
    """(keys, fields, keys) of (key, field) records as text[] literals, for a join on
    unnest(keys, fields) that also filters `key = ANY(keys)`: with it the planner probes the
    primary key for these keys instead of hashing the whole table on every page (quadratic in
    the store's size)."""
    keys = text_array([k for k, _ in records])
    return keys, text_array([f for _, f in records]), keys


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def log_spend(config: Config, command: str, budget: RequestBudget) -> None:
    """Record a read-only command's KV spend (inventory, plan, doctor) as a finished run, when a
    Postgres with kvmigrate's schema is configured; otherwise there is nowhere to keep it and
    nothing is done. Never fails the command it accounts for."""
    if not config.pg_url or not budget.spent:
        return
    try:
        with psycopg.connect(config.pg_url, connect_timeout=5, application_name="kvmigrate") as conn:
            found = conn.execute("SELECT to_regclass('kvmigrate.kv_requests') IS NOT NULL").fetchone()
            if not found or not found[0]:
                return
            run_id = start_run(conn, command, dry_run=False, options={})
            finish_run(conn, run_id, status="ok", budget=budget, result={"kv_requests": budget.spent})
    except psycopg.Error:
        return

# ---- cleanup's marks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What cleanup needs of one ledger row: its status and verified digest."""

    status: str
    verified_hash: str | None


def ledger_states(conn: psycopg.Connection, keys: Sequence[str]) -> dict[str, dict[str, LedgerState]]:
    """Ledger rows of these keys (looked up by the name the ledger stores, `storable_name`), by
    key as read from KV, then field. Read-only."""
    names: dict[str, list[str]] = {}
    for k in keys:
        names.setdefault(storable_name(k)[0], []).append(k)
    out: dict[str, dict[str, LedgerState]] = {}
    rows = conn.execute("SELECT key, field, status, verified_hash FROM kvmigrate.ledger WHERE key = ANY(%s)",
                        (list(names),)).fetchall()
    for key, fld, status, verified in rows:
        for raw in names[key]:
            out.setdefault(raw, {})[fld] = LedgerState(status, verified)
    return out


def mark_cleaned(conn: psycopg.Connection, archived: Sequence[str], deleted: set[str]) -> None:
    """Record in the ledger when keys were archived (called before the delete) and deleted
    (called again after the KV delete returned). Keys are named as the ledger stores them."""
    with conn.transaction():
        conn.execute("UPDATE kvmigrate.ledger SET archived_at = now() WHERE key = ANY(%s)",
                     ([storable_name(k)[0] for k in archived],))
        if deleted:
            conn.execute("UPDATE kvmigrate.ledger SET deleted_at = now() WHERE key = ANY(%s)",
                         ([storable_name(k)[0] for k in deleted],))


def archived_not_deleted(conn: psycopg.Connection, entities: Sequence[str]) -> list[str]:
    """Keys of these entities an earlier cleanup archived but did not record as deleted (a run
    killed between the delete and its record), as the ledger names them. Read-only."""
    rows = conn.execute(
        "SELECT DISTINCT key FROM kvmigrate.ledger WHERE archived_at IS NOT NULL AND deleted_at IS NULL"
        " AND entity = ANY(%s) ORDER BY key", (list(entities),)).fetchall()
    return [k for (k,) in rows]
