"""What replacing a Postgres row would lose: the rule behind `verify --repair`'s refusal.

A repair replaces a row with the one its KV sources give now. It is refused (per row) when the
new row holds less than the old one: a column that had a value becomes null or empty, a list
(a TEXT[] column or a JSON array) loses members, a JSON object loses keys, recursively. A
scalar that only changes is an update, not a loss: counters go down legitimately (a streak's
current count is reset), names and texts are edited. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_PREVIEW = 3


def row_losses(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What `new` (a row as JSON, column → value) no longer holds of `old`, one phrase per
    column or nested field; empty when nothing is lost."""
    out: list[str] = []
    for column, was in old.items():
        out.extend(_lost(column, was, new.get(column)))
    return out


def _lost(path: str, was: Any, now: Any) -> list[str]:
    if _empty(was):
        return []
    if _empty(now):
        return [f"{path} ({_show(was)} would become {'null' if now is None else _show(now)})"]
    if isinstance(was, list):
        if not isinstance(now, list):
            return [f"{path} (a list of {len(was)} would become {_show(now)})"]
        kept = {_canonical(v) for v in now}
        gone = [v for v in was if _canonical(v) not in kept]
        return [f"{path} ({len(gone)} of its {len(was)} items: {_items(gone)})"] if gone else []
    if isinstance(was, dict):
        if not isinstance(now, dict):
            return [f"{path} (an object of {len(was)} keys would become {_show(now)})"]
        gone = [k for k in was if k not in now and not _empty(was[k])]
        out = [f"{path} (keys {_items(gone)})"] if gone else []
        for k, v in was.items():
            if k in now:
                out.extend(_lost(f"{path}.{k}", v, now[k]))
        return out
    return []


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _items(values: list[Any]) -> str:
    shown = ", ".join(_show(v) for v in values[:_PREVIEW])
    return shown + (f", … {len(values) - _PREVIEW} more" if len(values) > _PREVIEW else "")


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "…"
