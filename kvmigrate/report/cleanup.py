"""Renderings of `kvmigrate cleanup` and `kvmigrate restore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kvmigrate.report.core import render

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.cleanup import CleanupResult
    from kvmigrate.phases.cutover import CleanupPhaseResult
    from kvmigrate.phases.restore_cost import RestoreResult


@render.register
def _(r: CleanupResult, console: Console) -> None:
    title = "cleanup (dry run: nothing archived or deleted)" if r.dry_run else f"cleanup run {r.run_id}"
    table = Table(title=title)
    for col in ("entity", "candidates", "deletable", "archived", "deleted", "kept", "gone"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for name, e in r.entities.items():
        kept = sum(k.count for k in e.kept.values())
        table.add_row(name, str(e.candidates), str(e.deletable), str(e.archived), str(e.deleted), str(kept),
                      str(e.vanished))
    console.print(table)
    for name, e in r.entities.items():
        for reason, k in e.kept.items():
            console.print(f"kept {k.count} {name} keys ({reason}), e.g. {', '.join(k.examples)}: {k.hint}",
                          markup=False)
    if r.manifest and not r.dry_run:
        console.print(f"archive: {r.archive_dir} (manifest {r.manifest}); undo with "
                      f"`kvmigrate restore {r.archive_dir}`", markup=False)
    console.print(f"KV requests: {r.kv_requests} in {r.seconds:.1f}s; presence, sessions, rate limits and unknown "
                  "keys were not touched")


@render.register
def _(r: CleanupPhaseResult, console: Console) -> None:
    for c in r.changes:
        console.print(f"{c.entity}: {c.before} -> {c.after}" if c.changed else f"{c.entity}: already {c.after}")
    if r.changes:
        console.print("the app must now write these entities to Postgres only; presence and sessions stay in KV")
    if r.verify is not None:
        render(r.verify, console)
    render(r.cleanup, console)
    if r.verify is not None:
        console.print(f"KV requests in all: {r.kv_requests}")


@render.register
def _(r: RestoreResult, console: Console) -> None:
    title = f"restore from {r.archive_dir}" + (" (dry run: nothing written)" if r.dry_run else "")
    table = Table(title=title)
    first = "would restore" if r.dry_run else "restored"
    for col in ("entity", first, "already equal", "overwritten", "refused", "expired", "failed"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for name, c in r.entities.items():
        table.add_row(name, str(c.restored), str(c.equal), str(c.overwritten), str(c.refused), str(c.expired),
                      str(c.failed))
    console.print(table)
    console.print(f"{len(r.files_verified)} archive files matched the manifest")
    for key in r.refused[:10]:
        console.print(f"refused: {key} exists with a different value (use --force to overwrite)", markup=False)
    for key, why in r.failed[:10]:
        console.print(f"failed: {key}: {why}", markup=False)
    for name in r.unlisted_files:
        console.print(f"not covered: {name} is in the archive folder but not in its manifest; its keys cannot be "
                      "checked or restored", markup=False)
    if r.missing:
        console.print(f"not restorable: {r.missing} keys the ledger marks deleted are in no archive line here, "
                      f"e.g. {', '.join(r.missing_examples)}", markup=False)
    elif not r.ledger_checked:
        console.print("ledger not checked (no Postgres URL): deleted keys missing from the archive would go "
                      "unnoticed", markup=False)
    if r.forecast is not None:
        what = "a real run would cost" if r.dry_run else "forecast"
        console.print(f"{what}: {r.forecast.commands} KV commands for {r.forecast.keys} keys", markup=False)
    console.print(f"{r.flags}; KV requests: {r.kv_requests}" + (f" ({r.resends} resent)" if r.resends else ""))
