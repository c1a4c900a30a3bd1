"""Renderings of the Prisma handoff: without --out the schema itself (the data, for a pipe);
with --out the files written and the steps that put the app under Prisma Migrate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from kvmigrate.report.core import render

if TYPE_CHECKING:  # the result types, for annotations only (report/ imports model/ only)
    from kvmigrate.phases.prisma import PrismaHandoff


@render.register
def _(result: PrismaHandoff, console: Console) -> None:
    if result.out is None:
        console.print(result.schema_prisma, markup=False, highlight=False, end="")
        return
    console.print(f'{len(result.models)} tables of schema "{result.schema}" handed to Prisma:', markup=False)
    for path in result.written:
        console.print(f"  wrote {path}", markup=False)
    if result.notes:
        console.print("kept by the baseline, not expressible in Prisma (noted in schema.prisma):", markup=False)
        for note in result.notes:
            console.print(f"  {note}", markup=False)
    console.print("next, in the app's folder:", markup=False)
    for step in result.next_steps:
        console.print(f"  {step}", markup=False)
