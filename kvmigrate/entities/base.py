"""The small protocol every entity implements; one module per entity, listed in the registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

from kvmigrate.entities.common import Bad
from kvmigrate.model.records import Merged, Outcome, RawRecord, SourcedRow

#: Combines every source of one row of a `fill` table (see TableSpec.combine).
Combine = Callable[[Sequence[SourcedRow]], Merged]


@dataclass(frozen=True)
class Family:
    """One shape of KV keys an entity reads.

    `pattern` is a Redis glob (`msg:*`) or an exact key (`vibe:messages`). `types` are the
    Redis types accepted (any other type is a reject). `rank` decides which source wins when two
    produce the same primary key (higher wins). `split_fields`: the key is one big hash whose
    fields are separate records, read with HSCAN. `index`: a derived index (no rows of its own);
    backfill and verify do not read it (it is in the ledger, and cleanup archives it with its
    entity) unless `decides`: its content decides other rows (`unread:*` counters, say).
    `may_expire`: keys of this family can carry a TTL, so the archive reads their PTTL.
    `companion`: the name of another family of the entity whose key (same suffix) is read with
    each key of this one and handed to the transformer as `RawRecord.companion`.
    `many_rows`: one record can hold more rows than a page (`vibe:games`, a game per row):
    backfill takes its outcome in parts (see EntityBase.transform_parts).
    `refers`: its records name other records (a thread's message ids, see Outcome.refs), so a
    rerun transforms them even when unchanged (the run counts the ids no message has).
    """

    name: str
    pattern: str
    types: frozenset[str]
    rank: int = 0
    split_fields: bool = False
    index: bool = False
    companion: str = ""
    decides: bool = False
    may_expire: bool = False
    many_rows: bool = False
    refers: bool = False

    @property
    def read_by_backfill(self) -> bool:
        """Whether backfill and verify read this family's values (else: named in the ledger only)."""
        return not self.index or self.decides


@dataclass(frozen=True)
class TableSpec:
    """A target table: its primary key, its columns in load order, which columns reference
    users(handle) (a missing user gets a placeholder row, see README), and how two sources
    for one primary key combine: `replace` (higher rank wins whole) or `fill` (higher rank wins
    field by field, lower ranks fill NULL columns, JSONB objects merge key by key).

    `combine`, for a `fill` table, replaces that rule: a pure function of every source of one
    row (in any order; the result must not depend on it) returning the row and the sources it
    merged away. Every source of a fill table is recorded, so the row is recomputed from all of
    them whichever page brought which. `sample_whole`, `derivable`: see below."""

    name: str
    pk: str
    columns: tuple[str, ...]
    user_refs: tuple[str, ...] = ()
    merge: Literal["replace", "fill"] = "replace"
    json_columns: tuple[str, ...] = ()
    combine: Combine | None = None
    #: A sampled verify reads a fill table's entity whole (a merged row needs every source);
    #: False samples it by key like a replace table (its copies rarely disagree).
    sample_whole: bool = True
    #: A row with one source is that source's values (the combine needs no source meta), so
    #: only rows of several sources keep them in `kvmigrate.fill_sources` (adapters.pg.sources).
    derivable: bool = False
    #: For a derivable table, (prefix, rank) of the records named after the rows they make
    #: (`msg:{id}` makes the `messages` row `id`): a row such a record owns when first loaded
    #: gets no row_origin row; the record's ledger row says `owns_row` (adapters.pg.owners).
    key_owner: tuple[str, int] | None = None


class Entity(Protocol):
    """An entity: key families in, rows of one or more tables out. `transform` is pure."""

    name: str
    load_order: int
    families: tuple[Family, ...]
    tables: tuple[TableSpec, ...]

    def transform(self, record: RawRecord) -> Outcome:
        """Turn one record into rows or a reject. Never raises; never does I/O."""
        ...

    def transform_parts(self, record: RawRecord, rows: int) -> Iterator[Outcome]:
        """`transform`, in parts of about `rows` rows for a record that can hold more rows than
        a page (see EntityBase.transform_parts). Never raises; never does I/O."""
        ...


class EntityBase:
    """Shared plumbing for entity modules: dispatch a record to the handler of its family,
    reject a Redis type the family does not accept, and turn any `Bad` value (or any other
    exception: a transformer never raises) into a Reject whose message names the key.

    A subclass sets `name`, `load_order`, `families`, `tables` and defines one method
    `from_<family name>(record) -> Outcome` per family.
    """

    name: str = ""
    load_order: int = 0
    families: tuple[Family, ...] = ()
    tables: tuple[TableSpec, ...] = ()

    def family(self, name: str) -> Family:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise KeyError(name)

    @cached_property
    def _dispatch(self) -> dict[str, tuple[Family, Callable[[RawRecord], Outcome]]]:
        """Family name -> (the family, its `from_<name>` method), filled as records arrive."""
        return {}

    def transform(self, record: RawRecord) -> Outcome:
        """Turn one record into rows or a reject. Never raises; never does I/O."""
        if record.name_problem:
            return Outcome.rejected("invalid_key", f"{_where(record)}: {record.name_problem}; Postgres cannot store it")
        found = self._dispatch.get(record.family)
        if found is None:
            try:
                fam = self.family(record.family)
            except KeyError:
                return Outcome.rejected("unknown_family", f"{_where(record)}: no {self.name} family {record.family!r}")
            found = self._dispatch[record.family] = (fam, getattr(self, f"from_{fam.name}"))
        fam, handler = found
        if record.redis_type not in fam.types:
            expected = " or ".join(sorted(fam.types))
            return Outcome.rejected(
                "wrong_redis_type", f"{_where(record)} is a Redis {record.redis_type}, expected {expected}")
        try:
            outcome: Outcome = handler(record)
        except Bad as exc:
            return Outcome.rejected(exc.code, f"{_where(record)}: {exc}")
        except RecursionError:
            return Outcome.rejected("too_deep", f"{_where(record)}: value is nested too deeply")
        except Exception as exc:  # noqa: BLE001 - a transformer never raises; the bug is reported
            return Outcome.rejected("transform_error", f"{_where(record)}: {type(exc).__name__}: {exc}")
        return outcome

    def transform_parts(self, record: RawRecord, rows: int) -> Iterator[Outcome]:
        """`transform`'s outcome in parts, each with its own rows, item rejects and stats, so
        memory follows one part. An entity with a `many_rows` family overrides this (backfill
        calls it for that family's records only); a record it cannot split comes whole, as one
        part. A part that rejects the record is `transform`'s whole outcome, and the parts
        before it do not count (engine.batch.outcome_parts checks them all before any is
        loaded). Otherwise the parts, taken together, hold what `transform` returns. By
        default, one part: `transform`."""
        yield self.transform(record)


def _where(record: RawRecord) -> str:
    """How a message names the record: its key, and its field when it is one."""
    return record.key + (f" field {record.field!r}" if record.field else "")
