"""`kvmigrate rejects`: what could not be migrated, why, and the original value. Read-only."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.files.private import write_private
from kvmigrate.adapters.pg import results
from kvmigrate.model.config import Config
from kvmigrate.model.serial import to_dict


@dataclass(frozen=True)
class RejectRow:
    key: str
    field: str
    entity: str
    reason: str
    message: str
    raw_value: str | None
    encoding: str


@dataclass(frozen=True)
class RejectsResult:
    rows: tuple[RejectRow, ...]
    by_reason: dict[str, int]
    exported_to: str | None


def list_rejects(config: Config, *, entities: tuple[str, ...] = (), export: Path | None = None) -> RejectsResult:
    """Read kvmigrate.rejects (optionally one entity); `export` writes JSONL (mode 0600)."""
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        rows = results.reject_rows(conn, entities)
    result = tuple(RejectRow(*r) for r in rows)
    by_reason: dict[str, int] = {}
    for r in result:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    if export is not None:
        write_private(export, b"".join(orjson.dumps(dataclasses.asdict(r)) + b"\n" for r in result))
    return RejectsResult(result, by_reason, str(export) if export else None)


@to_dict.register
def _(r: RejectsResult) -> dict[str, Any]:
    return {"count": len(r.rows), "by_reason": r.by_reason, "exported_to": r.exported_to,
            "rejects": [dataclasses.asdict(x) for x in r.rows]}


def rejects(config: Config, *, entities: Sequence[str] = (), export: Path | None = None) -> RejectsResult:
    """List rejected records with reasons and original values; optionally export JSONL. Read-only."""
    return list_rejects(config, entities=tuple(entities), export=export)
