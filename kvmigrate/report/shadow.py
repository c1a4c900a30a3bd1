"""Renderings of a shadow run: per view the share that matched, then the first differences."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from kvmigrate.phases.shadow import ShadowResult, ViewCheck
from kvmigrate.report.core import render, to_dict


def _check(c: ViewCheck) -> dict[str, Any]:
    return {"subject": c.subject, "differences": [{"field": d.path, "kv": to_dict(d.kv), "postgres": to_dict(d.pg)}
                                                  for d in c.differences]}


@to_dict.register
def _(r: ShadowResult) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "clean": r.clean,
        "handles": r.handles,
        "views": {n: {"checked": s.checked, "matched": s.matched, "share": round(s.share, 4),
                      "first_differences": [_check(c) for c in s.first]} for n, s in r.views.items()},
        "merged_keys": r.merged_keys,
        "keys_read": r.keys_read,
        "healed": r.healed,
        "kv_requests_forecast": r.forecast,
        "kv_requests": r.budget.spent,
        "kv_requests_by_command": dict(sorted(r.budget.by_command.items())),
        "seconds": round(r.seconds, 3),
    }


@render.register
def _(r: ShadowResult, console: Console) -> None:
    table = Table(title=f"shadow: the app's read views for {len(r.handles)} users, KV vs Postgres")
    for col in ("view", "checked", "matched", "share"):
        table.add_column(col, justify="left" if col == "view" else "right")
    for name, s in r.views.items():
        table.add_row(name, str(s.checked), str(s.matched), f"{100 * s.share:.1f}%")
    console.print(table)
    for name, s in r.views.items():
        for c in s.first:
            console.print(f"{name} {c.subject}:", markup=False)
            for d in c.differences:
                console.print(f"  {d.path}: KV {_show(d.kv)} | Postgres {_show(d.pg)}", markup=False)
    for h, keys in sorted(r.merged_keys.items()):
        console.print(f"keys collapsing into {h}: {', '.join(keys)} (shown combined by the data rules)", markup=False)
    if r.healed:
        console.print(f"healed: {r.healed} view(s) differed at first and matched when looked at again (writes in "
                      "flight)", markup=False)
    again = ", plus the second look at what differed" if r.healed or not r.clean else ""
    console.print(f"KV: {r.budget.spent} billed commands (forecast at most {r.forecast}{again}), {r.keys_read} keys "
                  "read once each, read-only", markup=False)
    console.print("all views match" if r.clean else "views differ: exit 1", markup=False)


def _show(value: Any) -> str:
    out = to_dict(value)
    return "absent" if out is None else str(out)
