"""The human form of a rehearse (its JSON form is in kvmigrate.phases.rehearse, its Markdown summary
in kvmigrate.model.rehearse_markdown)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from kvmigrate.model.rehearse_markdown import COST_ROWS
from kvmigrate.report.core import render, to_dict

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.rehearse import RehearseResult


@render.register
def _(r: RehearseResult, console: Console) -> None:
    render(r.backfill, console)
    render(r.verify, console)
    if r.shadow is not None:
        render(r.shadow, console)
    for g in r.rejects:
        console.print(f"rejects: {g.entity} {g.reason}: {g.count} (e.g. {g.example_key})", markup=False)
    data = to_dict(r)
    for key, label in COST_ROWS:
        console.print(f"KV requests, {label}: {data['kv_requests'][key]}")
    for c in r.checks:
        console.print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}", markup=False)
    for path in (r.report_path, r.markdown_path):
        if path:
            console.print(f"report written to {path}", markup=False)
    console.print(f"rehearse {'passed' if r.ok else f'FAILED (exit {r.exit_code})'} in {r.seconds:.1f}s")
