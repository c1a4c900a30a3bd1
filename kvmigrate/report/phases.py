"""Renderings of the phase commands: dual-write, cutover and status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from kvmigrate.report.core import render

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.cutover import CutoverResult, DualWriteResult, PhaseChange
    from kvmigrate.phases.status import StatusResult

APP_DUAL = (
    "the app must now write every change of these entities to KV first, then to Postgres (upsert), "
    "and keep reading from KV; see the README, 'For the app'"
)
APP_CUTOVER = "the app must now read these entities from Postgres, still writing both (KV first, then Postgres)"
APP_ROLLBACK = "the app must read these entities from KV again (writes stay dual)"


def _changes(changes: list[PhaseChange], console: Console) -> None:
    for c in changes:
        console.print(f"{c.entity}: {c.before} -> {c.after}" if c.changed else f"{c.entity}: already {c.after}")


@render.register
def _(r: DualWriteResult, console: Console) -> None:
    _changes(r.changes, console)
    if r.backfill is None:
        console.print("dual writes stopped: the app must write these entities to KV only")
        return
    render(r.backfill, console)
    if r.verify is not None:
        render(r.verify, console)
    console.print(APP_DUAL)
    console.print(f"KV requests in all: {r.kv_requests}")
    if r.clean:
        console.print("next: `kvmigrate cutover` once the app has dual-written for a while and a verify is clean")


@render.register
def _(r: CutoverResult, console: Console) -> None:
    for g in r.gates:
        console.print(f"{'ok  ' if g.ok else 'SKIP'} gate {g.entity}: {g.reason}", markup=False)
    _changes(r.changes, console)
    if r.forced and any(not g.ok for g in r.gates):
        console.print("forced past the gate: recorded in the phase history")
    console.print(APP_ROLLBACK if r.rollback else APP_CUTOVER)


@render.register
def _(r: StatusResult, console: Console) -> None:
    table = Table(title="kvmigrate status")
    for col in ("entity", "phase", "writes", "reads", "migrated", "rejected", "verified", "deleted",
                "last backfill", "last verify"):
        table.add_column(col, justify="left" if col in ("entity", "phase", "writes", "reads",
                                                        "last backfill", "last verify") else "right")
    for e in r.entities:
        table.add_row(e.name, e.phase, e.writes, e.reads, str(e.buckets.get("migrated", 0)),
                      str(e.buckets.get("rejected", 0)), str(e.verified_keys), str(e.deleted_keys),
                      _backfill(e.last_backfill), _verify(e.last_verify))
    console.print(table)
    if r.policy:
        console.print("left in KV: " + ", ".join(f"{k} {v} keys" for k, v in sorted(r.policy.items())))
    console.print(f"KV requests by kvmigrate today: {r.kv_requests_today} of a {r.daily_quota:,} daily quota "
                  f"({r.quota_share:.1%})")
    for run in r.running:
        console.print(f"run {run['id']} ({run['command']}) started {run['started_at']:%Y-%m-%d %H:%M} is still "
                      "marked running (or was killed: rerun it to resume)")
    for run in r.failed:
        when = f" at {run['finished_at']:%Y-%m-%d %H:%M}" if run["finished_at"] else ""
        console.print(f"the last {run['command']} (run {run['id']}) failed{when}: {run['error'] or 'no error recorded'}"
                      " — the counts above are what kvmigrate saw before it", markup=False)
    for h in r.history[:5]:
        console.print(f"{h.changed_at:%Y-%m-%d %H:%M} {h.entity}: {h.from_phase} -> {h.to_phase} by {h.by}"
                      f" ({h.reason})", markup=False)


def _backfill(info: dict[str, Any] | None) -> str:
    if not info:
        return "never"
    when = info["finished_at"]
    return f"run {info['run_id']} {info['status']}" + (f" {when:%m-%d %H:%M}" if when else "")


def _verify(info: dict[str, Any] | None) -> str:
    if not info:
        return "never"
    kind = "sample" if info["sampled"] else "full"
    verdict = "clean" if info["clean"] else f"{info['missing'] + info['extra'] + info['different']} diffs"
    return f"{verdict} ({kind}) {info['age_seconds'] // 60}m ago"
