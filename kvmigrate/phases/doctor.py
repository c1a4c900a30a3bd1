"""Pre-flight checks: can kvmigrate reach both servers, and may it do its work there?"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_kv, connect_pg, is_pooled_url
from kvmigrate.adapters.pg import state
from kvmigrate.adapters.pg.conflicts import (
    conflict_error,
    find_conflicts,
    recorded_schema,
    schema_mismatch,
    target_schema,
)
from kvmigrate.adapters.pg.migrations import pending_files, schema_status
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConnectError, KvmigrateError
from kvmigrate.model.serial import to_dict


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DoctorResult:
    checks: tuple[Check, ...]
    unreachable: bool
    kv_requests: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def check_kv(config: Config, budget: RequestBudget) -> list[Check]:
    """Reach KV and read its version. Costs 3 requests (PING, PING, INFO); read-only."""
    url = config.require_kv()
    try:
        kv = connect_kv(url, budget, retries=config.connect_retries, read_only=True)
    except ConnectError as exc:
        return [Check("kv reachable", False, exc.message)]
    t0 = time.perf_counter()
    kv.call("PING")
    rtt = (time.perf_counter() - t0) * 1000
    info = kv.call("INFO", "server")
    version = info.get("valkey_version") and f"Valkey {info['valkey_version']}" or f"Redis {info.get('redis_version', '?')}"
    tls = url.startswith(("rediss://", "valkeys://"))
    detail = f"{config.masked_kv_url}: {version}, {rtt:.1f} ms round trip, TLS {'on' if tls else 'off'}"
    return [Check("kv reachable", True, detail)]


def check_pg(config: Config) -> list[Check]:
    """Reach Postgres; check version, schema, privileges. Read-only."""
    url = config.require_pg()
    try:
        conn = connect_pg(url, retries=config.connect_retries, autocommit=True)
    except ConnectError as exc:
        return [Check("postgres reachable", False, exc.message)]
    with conn:
        t0 = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        rtt = (time.perf_counter() - t0) * 1000
        version = conn.info.server_version
        pooled = is_pooled_url(url)
        major = version // 10000
        checks = [
            Check(
                "postgres reachable",
                True,
                f"{config.masked_pg_url}: PostgreSQL {major}.{version % 10000}, {rtt:.1f} ms round trip, "
                + ("pooled endpoint (use the unpooled URL for setup/backfill)" if pooled else "direct (unpooled)"),
            ),
            Check("postgres version", major >= 14, f"PostgreSQL {major} (14 or newer needed)"),
        ]
        checks.append(_schema_check(conn, config.pg_schema))
        checks.append(_privilege_check(conn))
    return checks


def _schema_check(conn: psycopg.Connection, app_schema: str | None) -> Check:
    """Schema files applied, in the schema this run uses, and nothing in the way of the rest."""
    try:
        applied, known = schema_status(conn)
        target = target_schema(conn, app_schema)
        mismatch = schema_mismatch(recorded_schema(conn), target)
        if mismatch is not None:
            return Check("schema current", False, f"{mismatch.message}: {mismatch.hint}")
        pending = pending_files(conn)
        conflicts = find_conflicts(conn, [(m.filename, m.sql) for m in pending], app_schema)
    except KvmigrateError as exc:
        return Check("schema current", False, exc.message)
    where = f" (app tables in schema {target})" if target else ""
    if conflicts:
        error = conflict_error(conflicts)
        return Check("schema current", False, f"{applied} of {known} schema files applied, and `kvmigrate setup` "
                     f"would refuse: {error.message}; {error.hint}")
    if applied == known:
        return Check("schema current", True, f"{applied} of {known} schema files applied{where}")
    return Check("schema current", False, f"{applied} of {known} schema files applied{where}: run `kvmigrate setup`")


def _privilege_check(conn: psycopg.Connection) -> Check:
    row = conn.execute(
        "SELECT has_database_privilege(current_user, current_database(), 'CREATE'),"
        " coalesce(has_schema_privilege(current_user, current_schema(), 'CREATE'), true), current_user"
    ).fetchone()
    assert row is not None
    ok = bool(row[0]) and bool(row[1])
    return Check("privileges", ok, f"user {row[2]} may {'create schemas and tables' if ok else 'NOT create schemas/tables'}")


def run_doctor(config: Config, budget: RequestBudget) -> DoctorResult:
    """Run every check; never raises for a failed check (each is reported)."""
    checks = check_kv(config, budget) + check_pg(config)
    unreachable = any(c.name.endswith("reachable") and not c.ok for c in checks)
    return DoctorResult(tuple(checks), unreachable, budget.spent)


@to_dict.register
def _(result: DoctorResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "kv_requests": result.kv_requests,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
    }


def doctor(config: Config) -> DoctorResult:
    """Check both connections, versions, schema and privileges. Read-only; ~3 KV requests."""
    result = run_doctor(config, budget := RequestBudget(cap=config.max_requests, phase="doctor"))
    state.log_spend(config, "doctor", budget)
    return result
