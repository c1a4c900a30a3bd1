"""Renderings of setup and doctor results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from kvmigrate.report.core import render

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.adapters.pg.migrations import SetupResult
    from kvmigrate.phases.doctor import DoctorResult


@render.register
def _(result: SetupResult, console: Console) -> None:
    if result.dry_run:
        if not result.applied:
            console.print("schema is up to date: nothing would be applied")
        if result.app_schema and result.applied:  # what setup runs first; the connection's search_path names it
            console.print(f"CREATE SCHEMA IF NOT EXISTS {result.app_schema};\n"
                          f"SET search_path = {result.app_schema};", markup=False, highlight=False)
        for mig in result.applied:
            console.print(f"-- would apply {mig.filename}", style="bold")
            console.print(mig.sql, markup=False, highlight=False)
        return
    for mig in result.applied:
        console.print(f"applied {mig.filename}")
    if not result.applied:
        console.print(f"schema is up to date: {len(result.already)} files already applied, nothing to do")


@render.register
def _(result: DoctorResult, console: Console) -> None:
    for check in result.checks:
        mark = "[green]ok  [/]" if check.ok else "[red]FAIL[/]"
        console.print(f"{mark} {check.name}: {check.detail}", highlight=False)
    console.print(f"KV requests spent: {result.kv_requests}")
