"""`kvmigrate prisma`: schema.prisma and the baseline migration match the migrated tables exactly,
checked with Prisma's own schema parser (its DMMF) against what Postgres's catalog says, and the
baseline SQL rebuilds the same tables in an empty database."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kvmigrate import api as commands
from kvmigrate.model.config import build_config
from tests.fixtures import prisma as parser
from tests.helpers import cli, cli_json

#: A table another engineer might add: composite key, cascades, a self-check, odd types, a
#: partial unique index, an expression index, a descending and a hash index.
EXTRA_TABLE = """
CREATE TABLE user_follows (
    owner       TEXT NOT NULL REFERENCES users(handle) ON DELETE CASCADE,
    peer        TEXT NOT NULL REFERENCES users(handle) ON DELETE CASCADE ON UPDATE CASCADE,
    seq         BIGSERIAL,
    nickname    VARCHAR(40),
    score       NUMERIC(10, 2) DEFAULT 0,
    token       UUID DEFAULT gen_random_uuid(),
    muted       BOOLEAN NOT NULL DEFAULT false,
    labels      TEXT[] NOT NULL DEFAULT '{}',
    since       TIMESTAMP(3),
    note        TEXT DEFAULT 'it''s "new"',
    CONSTRAINT user_follows_pk PRIMARY KEY (owner, peer),
    CONSTRAINT no_self_connection CHECK (owner <> peer)
);
CREATE UNIQUE INDEX uf_owner_nickname ON user_follows (owner, nickname) WHERE nickname IS NOT NULL;
CREATE INDEX uf_lower_nickname ON user_follows (lower(nickname));
CREATE INDEX uf_since ON user_follows (since DESC, owner);
CREATE INDEX uf_token ON user_follows USING hash (token);
"""

# udt_name -> (Prisma type, native type in the DMMF or None)
EXPECTED_TYPES: dict[str, tuple[str, Any]] = {
    "text": ("String", None), "varchar": ("String", ["VarChar", ["40"]]), "uuid": ("String", ["Uuid", []]),
    "int4": ("Int", None), "int8": ("BigInt", None), "bool": ("Boolean", None),
    "numeric": ("Decimal", ["Decimal", ["10", "2"]]), "jsonb": ("Json", None),
    "timestamptz": ("DateTime", ["Timestamptz", ["6"]]), "timestamp": ("DateTime", ["Timestamp", ["3"]]),
    "date": ("DateTime", ["Date", []]),
}
ACTIONS = {"NO ACTION": "NoAction", "CASCADE": "Cascade", "RESTRICT": "Restrict", "SET NULL": "SetNull"}


@pytest.fixture(scope="session")
def prisma_parser() -> Path:
    reason = parser.missing_node()
    if reason:
        pytest.skip(reason)
    try:
        return parser.install()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def migrated(pg_url: str, pg: psycopg.Connection) -> str:
    """A database after `kvmigrate setup`, plus a table the schema files do not know."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    pg.execute(EXTRA_TABLE)
    return pg_url


def _handoff(pg_url: str, out: Path) -> dict[str, Any]:
    env = cli_json("--pg-url", pg_url, "prisma", "--out", str(out))
    return dict(env["result"])


def _columns(pg: psycopg.Connection, schema: str = "public") -> dict[str, dict[str, tuple[str, bool]]]:
    rows = pg.execute(
        "SELECT c.table_name, c.column_name, c.udt_name, c.is_nullable FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE'", (schema,)).fetchall()
    tables: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, udt, nullable in rows:
        tables.setdefault(table, {})[column] = (udt, nullable == "NO")
    return tables


def _key_columns(pg: psycopg.Connection, kind: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = pg.execute(
        "SELECT tc.constraint_name, tc.table_name, array_agg(k.column_name::text ORDER BY k.ordinal_position) "
        "FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage k "
        "USING (constraint_schema, constraint_name) "
        "WHERE tc.table_schema = 'public' AND tc.constraint_type = %s GROUP BY 1, 2", (kind,)).fetchall()
    return {name: (table, tuple(cols)) for name, table, cols in rows}


def _foreign_keys(pg: psycopg.Connection) -> dict[str, tuple[str, tuple[str, ...], str, tuple[str, ...], str, str]]:
    rows = pg.execute(
        "SELECT rc.constraint_name, k.table_name, array_agg(k.column_name::text ORDER BY k.ordinal_position), "
        "  r.table_name, array_agg(r.column_name::text ORDER BY k.ordinal_position), rc.delete_rule, rc.update_rule "
        "FROM information_schema.referential_constraints rc "
        "JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
        "JOIN information_schema.key_column_usage r ON r.constraint_name = rc.unique_constraint_name "
        "  AND r.constraint_schema = rc.unique_constraint_schema AND r.ordinal_position = k.position_in_unique_constraint "
        "WHERE rc.constraint_schema = 'public' GROUP BY 1, 2, 4, 6, 7").fetchall()
    return {n: (t, tuple(c), rt, tuple(rc), d, u) for n, t, c, rt, rc, d, u in rows}


def _plain_indexes(pg: psycopg.Connection) -> dict[str, str]:
    """Indexes no constraint owns: name -> indexdef."""
    rows = pg.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE contype IN ('p', 'u'))").fetchall()
    return dict(rows)


def test_prisma_models_match_the_migrated_tables_in_prismas_own_parser(
        migrated: str, pg: psycopg.Connection, tmp_path: Path, prisma_parser: Path) -> None:
    handoff = _handoff(migrated, tmp_path / "prisma")
    dm = parser.dmmf(prisma_parser, tmp_path / "prisma" / "schema.prisma")
    tables = _columns(pg)
    models = {m["dbName"] or m["name"]: m for m in dm["models"]}
    assert set(models) == set(tables), "one model per app table, and none of kvmigrate's state tables"
    assert "user_follows" in models and "ledger" not in models
    by_model = {m["name"]: table for table, m in models.items()}
    for table, columns in tables.items():
        scalars = {f.get("dbName") or f["name"]: f for f in models[table]["fields"] if f["kind"] in ("scalar", "enum")}
        assert set(scalars) == set(columns), table
        for column, (udt, not_null) in columns.items():
            f = scalars[column]
            is_list = udt.startswith("_")
            assert f["isList"] == is_list, (table, column)
            assert (f["type"], f["nativeType"]) == EXPECTED_TYPES[udt.lstrip("_")], (table, column, udt)
            if not is_list:
                assert f["isRequired"] == not_null, (table, column)
    for name, (table, cols) in _key_columns(pg, "PRIMARY KEY").items():
        model = models[table]
        db = {f["name"]: f.get("dbName") or f["name"] for f in model["fields"]}
        ids = [f["name"] for f in model["fields"] if f["isId"]] or model["primaryKey"]["fields"]
        assert tuple(db[i] for i in ids) == cols, table
        if name != f"{table}_pkey":
            assert model["primaryKey"]["name"] is None and name in handoff["schema_prisma"]
    fks = _foreign_keys(pg)
    assert len(fks) == 17  # 9 in the app tables, 6 in user_connections, friendships and reports, 2 in the extra table
    relations = [(m, f) for m in models.values() for f in m["fields"] if f["kind"] == "object" and f["relationFromFields"]]
    assert len(relations) == len(fks)
    for name, (table, cols, ref_table, ref_cols, on_delete, on_update) in fks.items():
        model = models[table]
        db = {f["name"]: f.get("dbName") or f["name"] for f in model["fields"]}
        field = next(f for f in model["fields"] if f.get("relationName") == name)
        assert by_model[field["type"]] == ref_table
        assert tuple(db[c] for c in field["relationFromFields"]) == cols
        ref_db = {f["name"]: f.get("dbName") or f["name"] for f in models[ref_table]["fields"]}
        assert tuple(ref_db[c] for c in field["relationToFields"]) == ref_cols
        assert (field["relationOnDelete"], field["relationOnUpdate"]) == (ACTIONS[on_delete], ACTIONS[on_update])
        back = [f for f in models[ref_table]["fields"] if f.get("relationName") == name and f is not field]
        assert len(back) == 1, f"{name} has its back relation on {ref_table}"
    indexes = {(ix["model"], ix.get("dbName")): [f["name"] for f in ix["fields"]]
               for ix in dm["indexes"] if ix["type"] in ("normal", "unique") and ix.get("dbName")}
    for name, definition in _plain_indexes(pg).items():
        if "lower(" in definition:  # an expression index: Prisma has no words for it, a note says so
            assert f"index {name} is on an expression (or has INCLUDE columns)" in handoff["schema_prisma"]
            continue
        m = re.search(r" ON public\.(\w+) USING \w+ \((.*?)\)(?: WHERE |$)", definition)
        assert m, definition
        model = models[m.group(1)]
        db = {f["name"]: f.get("dbName") or f["name"] for f in model["fields"]}
        assert [db[f] for f in indexes[(model["name"], name)]] == [c.split()[0] for c in m.group(2).split(", ")]
    schema = handoff["schema_prisma"]
    assert 'where: raw("(read = false)")' in schema and "idx_messages_unread is a partial index" in schema
    assert 'where: raw("(nickname IS NOT NULL)")' in schema
    assert "CHECK constraint no_self_connection cannot be expressed" in schema
    assert "labels is NOT NULL; Prisma lists cannot say so" in schema


def test_prisma_baseline_rebuilds_the_same_tables_in_an_empty_database(
        migrated: str, pg: psycopg.Connection, new_pg_url: Callable[[], str], tmp_path: Path) -> None:
    _handoff(migrated, tmp_path / "prisma")
    baseline = (tmp_path / "prisma" / "migrations" / "0_init" / "migration.sql").read_text()
    assert "kvmigrate." not in baseline.replace("`kvmigrate", "")
    assert 'provider = "postgresql"' in (tmp_path / "prisma" / "migrations" / "migration_lock.toml").read_text()
    shadow_url = new_pg_url()
    with psycopg.connect(shadow_url, autocommit=True) as shadow:
        shadow.execute(baseline.encode())
        assert _fingerprint(shadow) == _fingerprint(pg)
        assert shadow.execute("SELECT to_regnamespace('kvmigrate')").fetchone() == (None,)


def _fingerprint(conn: psycopg.Connection) -> dict[str, Any]:
    """Everything a table is, as the catalog says it: columns with types, nullability and
    defaults, every constraint's definition, every index's definition."""
    return {
        "columns": sorted(conn.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, udt_name, character_maximum_length, "
            "numeric_precision, datetime_precision, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public'").fetchall()),
        "constraints": sorted(conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace").fetchall()),
        "indexes": sorted(conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall()),
    }


def test_prisma_without_out_prints_only_the_schema_on_stdout(migrated: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("--pg-url", migrated, "prisma")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("// The app's tables")
    assert "model User {" in result.stdout and '@@map("users")' in result.stdout
    assert "schema.prisma follows on stdout" in result.stderr
    assert "schema.prisma follows" not in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_prisma_with_out_names_the_resolve_step(migrated: str, tmp_path: Path) -> None:
    result = cli("--pg-url", migrated, "prisma", "--out", str(tmp_path / "prisma"))
    assert result.exit_code == 0, result.output
    assert "npx prisma migrate resolve --applied 0_init" in result.stdout
    assert "wrote " + str(tmp_path / "prisma" / "schema.prisma") in result.stdout


def test_prisma_refuses_a_database_without_app_tables(pg_url: str) -> None:
    env = cli_json("--pg-url", pg_url, "prisma", expect=2)
    assert "has no tables to hand to Prisma" in env["error"]["message"]
    assert "kvmigrate setup" in env["error"]["hint"]


def test_prisma_refuses_kvmigrates_own_state_schema(migrated: str) -> None:
    env = cli_json("--pg-url", migrated, "prisma", "--schema", "kvmigrate", expect=2)
    assert "kvmigrate's own state" in env["error"]["message"]


def test_prisma_refuses_a_migrations_folder_with_other_migrations(migrated: str, tmp_path: Path) -> None:
    (tmp_path / "prisma" / "migrations" / "20250101000000_add_x").mkdir(parents=True)
    env = cli_json("--pg-url", migrated, "prisma", "--out", str(tmp_path / "prisma"), expect=2)
    assert "already holds migrations" in env["error"]["message"]
    assert not (tmp_path / "prisma" / "schema.prisma").exists()


def test_prisma_hands_over_tables_in_their_own_schema(pg_url: str, pg: psycopg.Connection, tmp_path: Path,
                                                      prisma_parser: Path) -> None:
    pg.execute("CREATE SCHEMA app; CREATE TABLE app.accounts (id INT PRIMARY KEY, email TEXT NOT NULL UNIQUE);"
               "CREATE TABLE app.sessions (id TEXT PRIMARY KEY, account INT REFERENCES app.accounts(id));")
    handoff = cli_json("--pg-url", pg_url, "prisma", "--schema", "app", "--out", str(tmp_path / "p"))["result"]
    assert handoff["models"] == {"accounts": "Account", "sessions": "Session"}
    dm = parser.dmmf(prisma_parser, tmp_path / "p" / "schema.prisma")
    assert {m["name"]: m["schema"] for m in dm["models"]} == {"Account": "app", "Session": "app"}
    account = next(m for m in dm["models"] if m["name"] == "Account")
    assert next(f for f in account["fields"] if f["name"] == "email")["isUnique"]
    assert 'CREATE TABLE "app"."accounts"' in handoff["migration_sql"]
