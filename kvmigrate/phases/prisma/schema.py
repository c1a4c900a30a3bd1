"""Write `schema.prisma` from the catalog: one model per table, one enum per enum type, each
field, key, relation and index as Postgres has it, and a `//` note wherever Prisma has no words
for what the table holds (CHECK constraints, expression indexes, NOT NULL lists). Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmigrate.phases.prisma import names
from kvmigrate.phases.prisma.catalog import Catalog, Constraint, Index, Table
from kvmigrate.phases.prisma.types import _escape, prisma_default, prisma_type

PRISMA_MAJOR = 7
_ACTIONS = {"a": "NoAction", "r": "Restrict", "c": "Cascade", "n": "SetNull", "d": "SetDefault"}
_METHODS = {"hash": "Hash", "gin": "Gin", "gist": "Gist", "spgist": "SpGist", "brin": "Brin"}


@dataclass
class _Model:
    table: Table
    name: str
    fields: dict[str, str]
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, attributes)
    block: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def taken(self) -> set[str]:
        return {n for n, _, _ in self.lines}


@dataclass(frozen=True)
class PrismaSchema:
    text: str
    models: dict[str, str]  # table -> model
    notes: tuple[str, ...]  # what Prisma cannot say, one line per table-level item
    preview_features: tuple[str, ...]


def render_schema(catalog: Catalog) -> PrismaSchema:
    """The whole schema.prisma text for the catalog's tables."""
    model_names = names.model_names(catalog)
    enums = names.enum_names(catalog, model_names)
    models = {t.name: _Model(t, model_names[t.name], names.field_names(t)) for t in catalog.tables}
    for model in models.values():
        _scalars(model, enums)
    _relations(catalog, models)
    preview: set[str] = set()
    for model in models.values():
        _keys_and_indexes(model, preview)
    blocks = [_header(catalog, tuple(sorted(preview)))]
    blocks += [_enum_block(catalog, e.name, enums[e.name]) for e in catalog.enums]
    blocks += [_model_block(m, catalog.schema) for m in models.values()]
    notes = tuple(f"{m.table.name}: {n}" for m in models.values() for n in m.notes)
    return PrismaSchema("\n\n".join(blocks) + "\n", model_names, notes, tuple(sorted(preview)))


def _header(catalog: Catalog, preview: tuple[str, ...]) -> str:
    lines = [
        f'// The app\'s tables in Postgres schema "{catalog.schema}", written by `kvmigrate prisma` from the',
        "// database's catalog after `kvmigrate setup` (regenerate it rather than editing it by hand",
        "// until the baseline migration prisma/migrations/0_init is marked applied).",
        "// kvmigrate's own state schema `kvmigrate` is left out on purpose: kvmigrate changes it with",
        "// its own versioned files, and you drop it once the migration is over; under Prisma Migrate",
        "// it would be drift to \"fix\". Prisma Migrate manages only the schema named here.",
        f"// Written for Prisma {PRISMA_MAJOR}: the connection URL lives in prisma.config.ts.",
        "",
        "generator client {",
        '  provider = "prisma-client"',
        '  output   = "../generated/prisma"',
    ]
    if preview:
        lines.append("  previewFeatures = [" + ", ".join(f'"{p}"' for p in preview) + "]")
    lines += ["}", "", "datasource db {", '  provider = "postgresql"']
    if catalog.schema != "public":
        lines.append(f'  schemas  = ["{_escape(catalog.schema)}"]')
    lines.append("}")
    return "\n".join(lines)


def _scalars(model: _Model, enums: dict[str, str]) -> None:
    table = model.table
    pk = table.primary_key
    for col in table.columns:
        scalar, native = prisma_type(col, enums.get(col.base_type))
        attrs: list[str] = []
        if pk and pk.columns == (col.name,):
            attrs.append("@id" + _map(pk.name, f"{table.name}_pkey"))
        unique = next((u for u in table.of_kind("u") if u.columns == (col.name,)), None)
        if unique and not (pk and pk.columns == (col.name,)):
            attrs.append("@unique" + _map(unique.name, f"{table.name}_{col.name}_key"))
        default = prisma_default(col, scalar)
        if default:
            attrs.append(default)
        if model.fields[col.name] != col.name:
            attrs.append(f'@map("{_escape(col.name)}")')
        if native:
            attrs.append(native)
        suffix = "[]" if col.is_array else ("" if col.not_null else "?")
        model.lines.append((model.fields[col.name], scalar + suffix, " ".join(attrs)))
        if col.is_array and col.not_null:
            model.notes.append(f"{col.name} is NOT NULL; Prisma lists cannot say so (the baseline keeps it)")
        if col.generated:
            model.notes.append(f"{col.name} is GENERATED ALWAYS AS ({col.generated}) STORED: never write it")
        if scalar.startswith("Unsupported("):
            model.notes.append(f"{col.name} has type {col.sql_type}, which Prisma Client cannot read or write")


def _relations(catalog: Catalog, models: dict[str, _Model]) -> None:
    taken_relations: set[str] = set()
    for model in models.values():
        table = model.table
        fks = [fk for fk in table.of_kind("f") if fk.ref_table in models]
        for fk in fks:
            ref = models[str(fk.ref_table)]
            relation = names.unique_name(fk.name, taken_relations)
            ambiguous = table.name == ref.table.name or sum(f.ref_table == fk.ref_table for f in fks) > 1
            one_to_one = _is_unique(table, fk.columns)
            optional = any(not table.column(c).not_null for c in fk.columns)
            forward = names.unique_name(names.forward_field(fk, ref.name, fk.ref_columns), model.taken)
            model.lines.append((forward, ref.name + ("?" if optional else ""), _relation_attr(model, ref, fk, relation)))
            back = names.unique_name(
                names.back_field(table, model.name, fk, one_to_one=one_to_one, ambiguous=ambiguous), ref.taken)
            ref.lines.append((back, model.name + ("?" if one_to_one else "[]"), f'@relation("{_escape(relation)}")'))
        for fk in table.of_kind("f"):
            if fk.ref_table not in models:
                model.notes.append(f"foreign key {fk.name} references a table outside this schema: {fk.definition}")


def _relation_attr(model: _Model, ref: _Model, fk: Constraint, relation: str) -> str:
    fields = ", ".join(model.fields[c] for c in fk.columns)
    refs = ", ".join(ref.fields[c] for c in fk.ref_columns)
    default = f"{model.table.name}_{'_'.join(fk.columns)}_fkey"
    parts = [f'"{_escape(relation)}"', f"fields: [{fields}]", f"references: [{refs}]",
             f"onDelete: {_ACTIONS[fk.on_delete]}", f"onUpdate: {_ACTIONS[fk.on_update]}"]
    if fk.name != default:
        parts.append(f'map: "{_escape(fk.name)}"')
    return "@relation(" + ", ".join(parts) + ")"


def _is_unique(table: Table, columns: tuple[str, ...]) -> bool:
    keys = [c.columns for c in table.constraints if c.kind in ("p", "u")]
    keys += [i.columns for i in table.indexes if i.unique and i.predicate is None and i.columns]
    return any(set(k) == set(columns) for k in keys)


def _keys_and_indexes(model: _Model, preview: set[str]) -> None:
    table, f = model.table, model.fields
    pk = table.primary_key
    if pk and len(pk.columns) > 1:
        model.block.append(f"@@id([{', '.join(f[c] for c in pk.columns)}]{_map(pk.name, table.name + '_pkey', ', ')})")
    for u in table.of_kind("u"):
        if len(u.columns) > 1:
            default = f"{table.name}_{'_'.join(u.columns)}_key"
            model.block.append(f"@@unique([{', '.join(f[c] for c in u.columns)}]{_map(u.name, default, ', ')})")
    for ix in table.indexes:
        line = _index(model, ix)
        if line is None:
            model.notes.append(f"index {ix.name} is on an expression (or has INCLUDE columns), which Prisma cannot express "
                               f"(the baseline keeps it; keep it out of later migrations): {ix.definition}")
            continue
        if ix.predicate is not None:
            preview.add("partialIndexes")
            model.block.append(f"// {ix.name} is a partial index (WHERE {ix.predicate}): Prisma {PRISMA_MAJOR} "
                               "says so only with the partialIndexes preview feature, enabled above")
        model.block.append(line)
    for c in table.of_kind("c") + table.of_kind("x"):
        kind = "CHECK constraint" if c.kind == "c" else "exclusion constraint"
        model.notes.append(f"{kind} {c.name} cannot be expressed in Prisma (the baseline keeps it): {c.definition}")
    if not pk and not table.of_kind("u") and not any(i.unique and i.predicate is None and i.columns for i in table.indexes):
        model.block.append("@@ignore")
        model.notes.append("has no primary key or unique column, so Prisma Client cannot use it (@@ignore)")


def _index(model: _Model, ix: Index) -> str | None:
    if not ix.columns:
        return None
    cols = [model.fields[c] + ("(sort: Desc)" if desc else "") for c, desc in zip(ix.columns, ix.descending, strict=True)]
    table = model.table.name
    kind = "unique" if ix.unique else "index"
    default = f"{table}_{'_'.join(ix.columns)}_{'key' if ix.unique else 'idx'}"
    parts = [f"[{', '.join(cols)}]"]
    if ix.name != default:
        parts.append(f'map: "{_escape(ix.name)}"')
    if ix.method in _METHODS:
        parts.append(f"type: {_METHODS[ix.method]}")
    if ix.predicate is not None:
        parts.append(f'where: raw("{_escape(ix.predicate)}")')
    return f"@@{kind}({', '.join(parts)})"


def _map(name: str, default: str, sep: str = "") -> str:
    if name == default:
        return ""
    return f'{sep}map: "{_escape(name)}"' if sep else f'(map: "{_escape(name)}")'


def _enum_block(catalog: Catalog, pg_name: str, prisma_name: str) -> str:
    enum = next(e for e in catalog.enums if e.name == pg_name)
    lines = [f"enum {prisma_name} {{"]
    for label in enum.labels:
        value = label if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", label) else (names.camel(label) or "value")
        lines.append(f"  {value}" + ("" if value == label else f' @map("{_escape(label)}")'))
    if prisma_name != pg_name or catalog.schema != "public":
        lines.append("")
    if prisma_name != pg_name:
        lines.append(f'  @@map("{_escape(pg_name)}")')
    if catalog.schema != "public":
        lines.append(f'  @@schema("{_escape(catalog.schema)}")')
    return "\n".join(lines + ["}"])


def _model_block(model: _Model, schema: str) -> str:
    width_name = max(len(n) for n, _, _ in model.lines)
    width_type = max(len(t) for _, t, _ in model.lines)
    out = [f"model {model.name} {{"]
    out += [f"  {n:<{width_name}} {t:<{width_type}} {a}".rstrip() for n, t, a in model.lines]
    tail = list(model.block)
    if model.name != model.table.name:
        tail.append(f'@@map("{_escape(model.table.name)}")')
    if schema != "public":
        tail.append(f'@@schema("{_escape(schema)}")')
    if tail or model.notes:
        out.append("")
    out += [f"  // {' '.join(n.split())}" for n in model.notes]
    out += [f"  {line}" for line in tail]
    return "\n".join(out + ["}"])
