"""Renderings of the Prisma handoff: without --out the schema itself (the data, for a pipe);
with --out the files written and the steps that put the app under Prisma Migrate."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from kvmigrate.phases.prisma import PrismaHandoff
from kvmigrate.report.core import render, to_dict


@to_dict.register
def _(result: PrismaHandoff) -> dict[str, Any]:
    return {
        "schema": result.schema,
        "models": result.models,
        "out": result.out,
        "written": list(result.written),
        "notes": list(result.notes),
        "next_steps": list(result.next_steps),
        "schema_prisma": result.schema_prisma,
        "migration_sql": result.migration_sql,
    }


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
