"""What a verify vouches for, per key: the ledger's `verified_hash`, and the differences that
only say Postgres moved on.

Cleanup deletes a key only while its current value has its `verified_hash`. Once an entity
writes to Postgres only (after `cleanup` moved its flags), KV is frozen and Postgres is the
source of truth: a row that differs from a KV key whose value has not changed since that key
verified is Postgres being newer (the app updated or deleted it there), not a lost write. Such a
difference is counted as `superseded`, not reported, and the key stays verified.
"""

from __future__ import annotations

from psycopg import sql

from kvmigrate.adapters.pg.verify_sql import (
    unchanged_since_verified,
    unverify_tainted,
    vouch_verified,
)
from kvmigrate.engine.diff import Differ
from kvmigrate.model.differences import Difference


def supersede(differ: Differ) -> None:
    """Move differences of Postgres-written entities whose KV source is unchanged since it
    verified from the report to the `superseded` count. Read-only."""
    candidates = [d for d in differ.diffs if d.kind != "extra" and d.key
                  and differ.entity_of(d.key) in differ.postgres_writes]
    if not candidates:
        return
    unchanged = unchanged_since_verified(differ.conn, {d.key for d in candidates})
    done: list[Difference] = [d for d in candidates if (d.key, d.source_field) in unchanged]
    differ.superseded = done
    differ.resolve(done, "superseded")
    differ.conn.commit()


def record_verified(differ: Differ, run_id: int) -> None:
    """Record in the ledger which keys verified: read now, and every row they produce agrees
    with Postgres. Their digest becomes `verified_hash` (and `verified_at` the time that
    value first verified; `verified_keys` counts the keys this run newly vouched for); keys with a remaining difference,
    a difference that healed (the value was changing) or a reject lose theirs. A key first
    seen by verify (written by a dual-writing app) and found consistent enters the ledger as
    migrated."""
    conn = differ.conn
    with conn.cursor().copy("COPY kvm_verify_diff FROM STDIN") as cp:
        for d in differ.diffs + differ.healed:
            cp.write_row((d.table, d.pk))
    for name, spec in differ.specs.items():
        conn.execute(sql.SQL(
            "INSERT INTO kvm_verify_bad SELECT e._src, e._fld FROM {s} e"
            " JOIN kvm_verify_diff d ON d.tbl = {t} AND d.pk = e.{pk}::text").format(
            s=sql.Identifier(differ.loaders[name].stage), t=sql.Literal(name), pk=sql.Identifier(spec.pk)))
    # A merged (fill) row is built from several records: a difference taints every one of them.
    conn.execute("INSERT INTO kvm_verify_bad SELECT k.src, k.fld FROM kvm_expect_keys k"
                 " JOIN kvm_verify_diff d ON d.tbl = k.tbl AND d.pk = k.pk")
    conn.execute("ANALYZE kvm_verify_bad")
    unverify_tainted(conn, differ.postgres_writes)
    for entity, n in vouch_verified(conn, run_id):
        if entity in differ.checks:
            differ.checks[entity].verified_keys += int(n)
    conn.commit()
