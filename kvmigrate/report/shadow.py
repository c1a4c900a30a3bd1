"""Renderings of a shadow run: per view the share that matched, then the first differences."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from kvmigrate.report.core import render, to_dict

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.shadow import ShadowResult


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
