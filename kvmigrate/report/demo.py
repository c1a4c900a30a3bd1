"""Renderings of `kvmigrate seed` and of the demo's final report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kvmigrate.report.core import render, to_dict

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.tryout.demo import DemoResult
    from kvmigrate.tryout.seed import SeedRun


@render.register
def _(r: DemoResult, console: Console) -> None:
    steps = Table(title="the migration, phase by phase")
    for col in ("step", "seconds", "KV commands"):
        steps.add_column(col, justify="left" if col == "step" else "right")
    for s in r.steps:
        steps.add_row(s.name, f"{s.seconds:.1f}", str(s.kv_requests))
    console.print(steps)
    counts = Table(title="where every key ended (ledger)")
    for col in ("entity", "migrated", "rejected", "kept", "unknown"):
        counts.add_column(col, justify="left" if col == "entity" else "right")
    for entity, c in sorted(r.counts.items()):
        counts.add_row(entity, *(str(c.get(k, 0)) for k in ("migrated", "rejected", "kept", "unknown")))
    console.print(counts)
    if r.shadow is not None:
        views = ", ".join(f"{n} {100 * v.share:.0f}%" for n, v in r.shadow.views.items())
        console.print(f"shadow before cutover ({len(r.shadow.handles)} users, {r.shadow.kv_requests} KV commands): "
                      f"views matching {views}", markup=False)
    if r.rejects_by_reason:
        console.print("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in r.rejects_by_reason.items())
                      + " (see `kvmigrate rejects`)")
    console.print(f"cleanup deleted {r.deleted:,} migrated keys" + (
        " and kept " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r.kept_after_cleanup.items())
        if r.kept_after_cleanup else "") + "; left in KV: "
        + ", ".join(f"{k} {v}" for k, v in r.kv_left.items()))
    data = to_dict(r)
    naive, quota = data["naive_migration_requests"], data["hobby_daily_quota"]
    console.print(f"KV commands billed to kvmigrate: {r.kv_requests:,} (the floor for one inventory, backfill, verify "
                  f"and cleanup of this store: {r.floor_requests:,}; this demo also runs a second verify"
                  + (f" and a shadow run ({r.shadow.kv_requests:,})" if r.shadow is not None else "") + f") — a naive "
                  f"per-key migration would spend about {naive:,} ({r.naive_requests:,} for its backfill alone); that is "
                  f"{r.kv_requests / quota:.1%} of one day's {quota:,}-command Hobby quota")
    console.print("counted as Upstash bills: every command the server runs, each one in a pipeline or MULTI/EXEC "
                  "included (kvmigrate sends no Lua scripts, whose inner commands would be billed too); AUTH, "
                  "SELECT and PING are free")
    console.print(f"the simulated app wrote {sum(r.app_writes_by_phase.values())} times ("
                  + ", ".join(f"{k}: {v}" for k, v in r.app_writes_by_phase.items())
                  + f") and spent {r.app_kv_commands} KV commands of its own")
    for error in r.app_errors[:5]:
        console.print(f"app error: {error}", markup=False)
    if r.app is not None:
        if r.app.pg_failures_healed:
            console.print(f"{r.app.pg_failures_healed} of the app's Postgres writes failed (non-fatal, like the real "
                          "app's); verify --repair restored them")
        verdict = "HOLDS" if r.app.ok else "FAILS"
        console.print(f"final check {verdict}: {r.app.rows_checked} rows the app wrote are in Postgres exactly once "
                      f"with the value it wrote last" + ("" if r.app.ok else
                      f"; missing {r.app.missing[:5]}, different {r.app.wrong[:5]}, "
                      f"copied under another key {r.app.duplicated[:5]}"), markup=False)
    if r.urls:
        console.print("servers kept running: " + ", ".join(f"{k}={v}" for k, v in r.urls.items()), markup=False)
    if r.files:
        console.print(f"cleanup's archive and the memory files: {r.files}", markup=False)


@render.register
def _(r: SeedRun, console: Console) -> None:
    k = r.keyspace
    console.print(f"seeded {k.keys_written:,} keys in {len(k.by_family)} families with {k.commands:,} KV commands, "
                  f"including {len(k.expected.bad_keys)} bad records and {len(k.expected.bad_items)} bad list items")
    if r.memories is not None:
        console.print(f"wrote {len(r.memories.files)} memory files ({len(r.memories.ids)} memories) to "
                      f"{r.memories_dir}", markup=False)
    console.print("next: `kvmigrate inventory`, then `kvmigrate setup` and `kvmigrate dual-write`")
