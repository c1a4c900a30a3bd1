"""Renderings of backfill, inventory, rejects and verify results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kvmigrate.report.core import render, to_dict

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.backfill_result import BackfillResult
    from kvmigrate.phases.inventory import InventoryResult
    from kvmigrate.phases.plan import PlanResult
    from kvmigrate.phases.rejects import RejectsResult
    from kvmigrate.phases.verify import VerifyResult


@render.register
def _(r: BackfillResult, console: Console) -> None:
    data = to_dict(r)
    table = Table(title="backfill" + (" (dry run: nothing written)" if r.dry_run else f" run {r.run_id}"))
    for col in ("entity", "scanned", "migrated", "rejected", "kept", "unknown", "rows written", "item rejects"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for name, t in data["entities"].items():
        table.add_row(name, *(str(t[k]) for k in ("scanned", "migrated", "rejected", "kept", "unknown",
                                                   "rows_written", "item_rejects")))
    console.print(table)
    for pattern, info in data["unknown_patterns"].items():
        console.print(f"unknown: {pattern} ({info['keys']} keys, e.g. {info['example']!r}) left in KV, not migrated")
    unchanged = sum(t["stats"].get("unchanged", 0) for t in data["entities"].values())
    if unchanged:
        console.print(f"unchanged: {unchanged} records migrated by an earlier backfill with the same rules and value;"
                      " counted from the ledger, not transformed or written again (--restart writes them all)")
    if r.placeholders:
        console.print(f"placeholder users: {r.placeholders} handles referenced with no user record (see README)")
    if r.dangling_refs:
        console.print(f"dangling references: {r.dangling_refs} message ids listed whose msg: record is gone")
    if r.resumed_from == -1:
        console.print("resumed after the last page: the scan had finished")
    elif r.resumed_from:
        console.print(f"resumed from scan cursor {r.resumed_from}")
    if r.skipped:
        console.print(f"skipped {', '.join(r.skipped)}: they write to Postgres only now (cleanup ran)")
    if r.server_restarts:
        console.print(f"the KV server restarted {r.server_restarts} time(s) during the run: scanned again from the "
                      "start so no key was skipped")
    console.print(f"KV commands billed: {r.budget.spent} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(r.budget.by_command.items()))}) in {r.seconds:.1f}s")
    if r.rejected:
        console.print(f"{r.rejected} rejects: see `kvmigrate rejects`")


@render.register
def _(r: InventoryResult, console: Console) -> None:
    table = Table(title=f"inventory: {r.total_keys} keys")
    for col in ("pattern", "status", "entity", "keys", "types", "items", "bytes", "with TTL"):
        table.add_column(col, justify="right" if col in ("keys", "items", "bytes", "with TTL") else "left")
    for pattern, c in sorted(r.patterns.items(), key=lambda kv: (kv[1].status, kv[0])):
        types = ", ".join(f"{t} {n}" for t, n in c.types.most_common())
        sizes = (str(c.items), str(c.bytes), str(c.with_ttl)) if r.sizes_measured else \
            (str(c.items) if c.items else "-", "-", "-")
        table.add_row(pattern, c.status, c.entity or "", str(c.keys), types, *sizes)
    console.print(table)
    if not r.sizes_measured:
        console.print("sizes and TTLs not measured (--sizes measures them at 2 billed commands per key)")
    console.print(", ".join(f"{k}: {v}" for k, v in sorted(r.by_status().items())))
    console.print(f"a backfill would cost about {r.predicted_backfill} billed KV commands (floor "
                  f"{r.backfill.floor + 1}; a naive per-key copy: {r.naive_requests})")
    console.print(f"this inventory cost {r.budget.spent} billed KV commands")


@render.register
def _(r: RejectsResult, console: Console) -> None:
    if not r.rows:
        console.print("no rejects")
        return
    table = Table(title=f"{len(r.rows)} rejects")
    for col in ("entity", "key", "field", "reason", "message", "value"):
        table.add_column(col, overflow="fold")
    for x in r.rows[:200]:
        value = (x.raw_value or "")[:60] + ("…" if x.raw_value and len(x.raw_value) > 60 else "")
        table.add_row(x.entity, x.key, x.field, x.reason, x.message, value + (" (base64)" if x.encoding == "base64" else ""))
    console.print(table)
    if len(r.rows) > 200:
        console.print(f"… {len(r.rows) - 200} more: use --json or --export FILE")
    if r.exported_to:
        console.print(f"exported to {r.exported_to}")


@render.register
def _(r: VerifyResult, console: Console, examples: int = 5) -> None:
    title = f"verify ({r.mode}{f', sample of {r.sampled} per entity' if r.sampled else ''}): " + (
        "CLEAN" if r.clean else "DIFFERENCES")
    table = Table(title=title)
    for col in ("entity", "checked", "missing", "extra", "different", "healed", "repaired", "superseded"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for name, c in r.entities.items():
        table.add_row(name, str(c.checked), str(len(c.missing)), str(len(c.extra)), str(len(c.different)),
                      str(c.healed), str(c.repaired), str(c.superseded))
    console.print(table)
    for name, c in r.entities.items():
        for d in (c.missing + c.extra + c.different)[:examples]:
            detail = "; ".join(f"{f}: KV {v[0]!r} vs PG {v[1]!r}" for f, v in d.fields.items())
            console.print(f"{d.kind}: {name} {d.table}.{d.pk} (from {d.key or 'no KV key'}) {detail}", markup=False)
    if r.confidence():
        console.print(r.confidence())
    if r.extra_deleted:
        console.print(f"deleted {r.extra_deleted} extra rows")
    for refused in r.refused:
        console.print(refused.message, markup=False)
    if r.refused:
        console.print(f"repair refused {len(r.refused)} rows: Postgres may hold the only copy of what they would "
                      "lose. Check those keys in KV; to replace the rows anyway, run `kvmigrate verify --repair "
                      "--allow-lossy-repair`", markup=False)
    if r.sources_forgotten:
        console.print(f"repair: {r.sources_forgotten} recorded sources are no longer in KV; the rows now follow "
                      "the sources that remain")
    if any(c.superseded for c in r.entities.values()):
        console.print("superseded: rows Postgres changed after writes moved there, from KV keys unchanged since "
                      "they verified (KV is behind, not Postgres); cleanup still removes those keys")
    console.print(f"KV requests: {r.budget.spent} in {r.seconds:.1f}s")
    if not r.clean:
        console.print("fix with `kvmigrate verify --repair` (re-copies from KV), then verify again")


@render.register
def _(r: PlanResult, console: Console) -> None:
    table = Table(title=f"plan: {r.inventory.total_keys:,} keys, {r.inventory.entity_keys:,} of them entity keys "
                  "(billed KV commands)")
    for col in ("phase", "kvmigrate", "floor", "naive per-key", "how"):
        table.add_column(col, justify="left" if col in ("phase", "how") else "right")
    for p in r.migration:
        table.add_row(p.phase, f"{p.commands:,}", "" if p.floor is None else f"{p.floor:,}",
                      "" if p.naive is None else f"{p.naive:,}", p.how)
    table.add_row("total", f"{r.total:,}", f"{r.floor_total:,}", f"{r.naive_total:,}", "")
    for p in r.phases:
        if p.optional:
            table.add_row(f"({p.phase})", f"{p.commands:,}", "", "", p.how)
    console.print(table)
    console.print(f"the whole migration: about {r.total:,} billed KV commands ({r.total / max(r.floor_total, 1):.2f}x "
                  f"the floor), {r.total / r.daily_quota:.1%} of a {r.daily_quota:,}-command daily quota "
                  f"(a naive per-key migration: {r.naive_total:,})")
    console.print("Upstash bills every command the server runs (each one inside a pipeline or MULTI/EXEC, and "
                  "each one a Lua script runs; kvmigrate sends no scripts); AUTH, SELECT and PING are free")
    console.print("re-checks and repairs of differences are not included; each extra verify costs about the "
                  "verify figure")
