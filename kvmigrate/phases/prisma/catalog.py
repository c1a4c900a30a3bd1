"""Read the app's tables from Postgres's own catalog (pg_catalog), as `kvmigrate setup` left them.

Everything the Prisma schema and the baseline migration say comes from here, never from a
hand-written list, so they cannot drift from `kvmigrate/schema/*.sql` or from tables added later.
The reads run with `search_path = pg_catalog`, so every name Postgres prints back (types,
referenced tables, sequences) is schema-qualified and means the same thing in any database.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

#: Tables in the app's schema that are not the app's: Prisma Migrate's own history table.
NOT_APP_TABLES = frozenset({"_prisma_migrations"})


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # format_type(): "text", "character varying(20)", "text[]"
    base_type: str  # the type's (or array element's) pg_type name: "text", "timestamptz", "int4"
    type_args: tuple[int, ...]  # length / precision / scale, when the type has them
    is_array: bool
    is_enum: bool
    not_null: bool
    default: str | None  # pg_get_expr of the default
    identity: str  # "" | "a" (ALWAYS) | "d" (BY DEFAULT)
    generated: str | None  # the expression of a GENERATED ALWAYS AS (...) STORED column


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str  # "p" primary key, "u" unique, "f" foreign key, "c" check, "x" exclusion
    columns: tuple[str, ...]
    definition: str  # pg_get_constraintdef
    ref_table: str | None = None
    ref_columns: tuple[str, ...] = ()
    on_delete: str = "a"  # a no action, r restrict, c cascade, n set null, d set default
    on_update: str = "a"


@dataclass(frozen=True)
class Index:
    """An index that no constraint owns (constraints' indexes come with the constraint)."""

    name: str
    columns: tuple[str, ...]  # empty for an expression index or one with INCLUDE columns
    descending: tuple[bool, ...]
    unique: bool
    method: str  # btree, hash, gin, gist, spgist, brin
    predicate: str | None  # the WHERE of a partial index
    definition: str  # pg_get_indexdef


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: tuple[Column, ...]
    constraints: tuple[Constraint, ...]
    indexes: tuple[Index, ...]

    @property
    def primary_key(self) -> Constraint | None:
        return next((c for c in self.constraints if c.kind == "p"), None)

    def of_kind(self, kind: str) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if c.kind == kind)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


@dataclass(frozen=True)
class EnumType:
    schema: str
    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    schema: str
    tables: tuple[Table, ...]
    enums: tuple[EnumType, ...]
    sequences: tuple[tuple[str, str, str, str], ...]  # (sequence, table, column, type) of serial columns


_TABLES = """
SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typcategory = 'A' THEN et.typname ELSE t.typname END,
       CASE WHEN t.typcategory = 'A' THEN et.typtype ELSE t.typtype END,
       t.typcategory = 'A', a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
       a.attgenerated
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""

_CONSTRAINTS = """
SELECT con.conname, con.contype,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       pg_get_constraintdef(con.oid), rt.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       con.confdeltype, con.confupdtype
FROM pg_constraint con LEFT JOIN pg_class rt ON rt.oid = con.confrelid
WHERE con.conrelid = %s AND con.contype IN ('p', 'u', 'f', 'c', 'x') ORDER BY con.conname"""

_INDEXES = """
SELECT i.relname,
       ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n
             WHERE k.o <= ix.indnkeyatts ORDER BY k.o),
       ARRAY(SELECT pg_index_column_has_property(ix.indexrelid, o::int, 'desc')
             FROM generate_series(1, ix.indnkeyatts) o),
       ix.indexprs IS NOT NULL OR ix.indnatts > ix.indnkeyatts, ix.indisunique, am.amname,
       pg_get_expr(ix.indpred, ix.indrelid), pg_get_indexdef(ix.indexrelid)
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_am am ON am.oid = i.relam
WHERE ix.indrelid = %s
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid AND con.conrelid = ix.indrelid)
ORDER BY i.relname"""

_ENUMS = """
SELECT t.typname, ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = %s AND t.typtype = 'e' ORDER BY t.typname"""

_SEQUENCES = """
SELECT s.relname, t.relname, a.attname, format_type(ps.seqtypid, NULL)
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_sequence ps ON ps.seqrelid = s.oid
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE n.nspname = %s AND d.deptype = 'a' ORDER BY s.relname"""


def current_schema(conn: psycopg.Connection) -> str:
    """The schema unqualified names land in (where `kvmigrate setup` created the app tables)."""
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row and row[0] else "public"


def read_catalog(conn: psycopg.Connection, schema: str) -> Catalog:
    """Read every table of `schema` (except Prisma's own history table). Read-only; one
    transaction, rolled back."""
    try:
        conn.execute("SET LOCAL search_path TO pg_catalog")
        tables = tuple(
            _table(conn, schema, oid, name)
            for oid, name in conn.execute(_TABLES, (schema,)).fetchall()
            if name not in NOT_APP_TABLES
        )
        enums = tuple(EnumType(schema, n, tuple(labels)) for n, labels in conn.execute(_ENUMS, (schema,)).fetchall())
        sequences = tuple((s, t, c, ty) for s, t, c, ty in conn.execute(_SEQUENCES, (schema,)).fetchall())
    finally:
        conn.rollback()
    return Catalog(schema, tables, enums, sequences)


def _table(conn: psycopg.Connection, schema: str, oid: int, name: str) -> Table:
    columns = tuple(
        Column(n, sql_type, base, _type_args(sql_type), bool(is_array), typtype == "e", bool(not_null),
               default, identity or "", default if generated == "s" else None)
        for n, sql_type, base, typtype, is_array, not_null, default, identity, generated
        in conn.execute(_COLUMNS, (oid,)).fetchall()
    )
    # a generated column's expression sits in pg_attrdef too: it is no default
    columns = tuple(c if c.generated is None else _no_default(c) for c in columns)
    constraints = tuple(
        Constraint(n, kind, tuple(cols), definition, ref, tuple(ref_cols or ()), on_delete or "a", on_update or "a")
        for n, kind, cols, definition, ref, ref_cols, on_delete, on_update
        in conn.execute(_CONSTRAINTS, (oid,)).fetchall()
    )
    indexes = tuple(
        Index(n, () if has_exprs else tuple(cols), tuple(desc), bool(unique), method, predicate, definition)
        for n, cols, desc, has_exprs, unique, method, predicate, definition
        in conn.execute(_INDEXES, (oid,)).fetchall()
    )
    return Table(schema, name, columns, constraints, indexes)


def _no_default(column: Column) -> Column:
    return Column(column.name, column.sql_type, column.base_type, column.type_args, column.is_array,
                  column.is_enum, column.not_null, None, column.identity, column.generated)


def _type_args(sql_type: str) -> tuple[int, ...]:
    """(20,) from "character varying(20)", (10, 2) from "numeric(10,2)", () from "text[]"."""
    start = sql_type.find("(")
    if start < 0:
        return ()
    inner = sql_type[start + 1:sql_type.index(")", start)]
    return tuple(int(x) for x in inner.split(",") if x.strip().isdigit())
