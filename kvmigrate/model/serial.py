"""The JSON form of every result: `to_dict` (dataclasses by default; a result type with its own form
registers it next to its definition), the one `--json` envelope and the masking serialiser. The
library persists results through it; report/ renders from it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import singledispatch
from typing import Any

import orjson

from kvmigrate import __version__
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.masking import mask_text
from kvmigrate.model.printable import printable_tree


@singledispatch
def to_dict(result: Any) -> Any:
    """The JSON form of a result (dataclasses by default)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: to_dict(getattr(result, f.name)) for f in dataclasses.fields(result)}
    if isinstance(result, (list, tuple)):
        return [to_dict(x) for x in result]
    if isinstance(result, dict):
        return {str(k): to_dict(v) for k, v in result.items()}
    if isinstance(result, (dt.datetime, dt.date)):
        return result.isoformat()
    return result


@to_dict.register
def _(budget: RequestBudget) -> dict[str, Any]:
    return budget.to_dict()


def envelope(
    command: str,
    *,
    started: dt.datetime,
    exit_code: int,
    result: Any = None,
    error: str | None = None,
    hint: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The one JSON envelope every `--json` output uses (see docs/report.schema.json)."""
    body: dict[str, Any] = {
        "command": command,
        "version": __version__,
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "result": None if result is None else to_dict(result),
        "warnings": warnings or [],
    }
    if error is not None:
        body["error"] = {"message": error, "hint": hint}
    return body


def dumps(obj: Any, secrets: tuple[str, ...] = ()) -> str:
    """Serialise for stdout, masking every secret on the way out; a KV name that is not text
    is shown escaped (`\\xNN`, as the ledger stores it)."""
    text = orjson.dumps(printable_tree(obj), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
    return mask_text(text, secrets)
