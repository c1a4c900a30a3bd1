"""Postgres column types and defaults in Prisma's words (its PostgreSQL connector's mapping).

Every native type is written out where it is not the Prisma type's own default (`DateTime` would
be `TIMESTAMP(3)`, `Decimal` `DECIMAL(65,30)`), so Prisma Migrate sees exactly the columns that
are there. Pure functions.
"""

from __future__ import annotations

import re

from kvmigrate.phases.prisma.catalog import Column

# pg_type name -> (Prisma type, native type attribute or None, default precision for its arguments)
_TYPES: dict[str, tuple[str, str | None, tuple[int, ...]]] = {
    "text": ("String", None, ()),
    "varchar": ("String", "VarChar", ()),
    "bpchar": ("String", "Char", ()),
    "uuid": ("String", "Uuid", ()),
    "citext": ("String", "Citext", ()),
    "inet": ("String", "Inet", ()),
    "xml": ("String", "Xml", ()),
    "bit": ("String", "Bit", ()),
    "varbit": ("String", "VarBit", ()),
    "int2": ("Int", "SmallInt", ()),
    "int4": ("Int", None, ()),
    "oid": ("Int", "Oid", ()),
    "int8": ("BigInt", None, ()),
    "float4": ("Float", "Real", ()),
    "float8": ("Float", None, ()),
    "numeric": ("Decimal", "Decimal", ()),
    "money": ("Decimal", "Money", ()),
    "bool": ("Boolean", None, ()),
    "timestamptz": ("DateTime", "Timestamptz", (6,)),
    "timestamp": ("DateTime", "Timestamp", (6,)),
    "date": ("DateTime", "Date", ()),
    "time": ("DateTime", "Time", (6,)),
    "timetz": ("DateTime", "Timetz", (6,)),
    "json": ("Json", "Json", ()),
    "jsonb": ("Json", None, ()),
    "bytea": ("Bytes", None, ()),
}


def prisma_type(column: Column, enum_model: str | None = None) -> tuple[str, str | None]:
    """(Prisma type, `@db.X(args)` or None) of a column's base type, without `?` or `[]`.
    A type Prisma has no name for is `Unsupported("...")`: the column stays, the client skips it."""
    if column.is_enum and enum_model:
        return enum_model, None
    known = _TYPES.get(column.base_type)
    if known is None:
        return f'Unsupported("{_escape(column.sql_type.removesuffix("[]"))}")', None
    scalar, native, default_args = known
    if native is None:
        return scalar, None
    args = column.type_args or default_args
    return scalar, f"@db.{native}" + (f"({', '.join(map(str, args))})" if args else "")


_LITERAL = re.compile(r"^'((?:[^']|'')*)'(?:::[\w\s.\"\[\]]+(?:\(\d+(?:,\d+)?\))?)?$")
_NUMBER = re.compile(r"^\(?(-?\d+(?:\.\d+)?)\)?(?:::[\w\s.\"]+)?$")
_NOW = {"now()", "CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP(6)", "statement_timestamp()"}


def prisma_default(column: Column, scalar: str) -> str | None:
    """The `@default(...)` of a column, or None. Literals become Prisma literals; `now()` and
    sequences Prisma's functions; any other expression `dbgenerated("...")`, unchanged."""
    expr = column.default
    if column.identity:
        return "@default(autoincrement())"
    if expr is None:
        return None
    if expr.startswith("nextval("):
        return "@default(autoincrement())"
    if expr in _NOW and scalar == "DateTime":
        return "@default(now())"
    literal = _literal(expr, column, scalar)
    return f"@default({literal})" if literal is not None else f'@default(dbgenerated("{_escape(expr)}"))'


def _literal(expr: str, column: Column, scalar: str) -> str | None:
    if column.is_array:
        return "[]" if re.fullmatch(r"'\{\}'::[\w\s.\"\[\]]+", expr) else None
    if scalar == "Boolean" and expr in ("true", "false"):
        return expr
    m = _NUMBER.match(expr)
    if m and scalar in ("Int", "BigInt", "Float", "Decimal"):
        return m.group(1)
    m = _LITERAL.match(expr)
    if m is None:
        return None
    value = m.group(1).replace("''", "'")
    if scalar in ("String", "Json"):
        return f'"{_escape(value)}"'
    if column.is_enum and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", value):
        return value
    if scalar in ("Int", "BigInt", "Float", "Decimal") and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return None


def _escape(text: str) -> str:
    """A Prisma string literal's content."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
