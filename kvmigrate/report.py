"""Human renderings (rich, on stderr) and JSON forms (on stdout) of every result."""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import singledispatch
from typing import Any

import orjson
from rich.console import Console

from kvmigrate import __version__
from kvmigrate.demo import DemoResult
from kvmigrate.doctor import DoctorResult
from kvmigrate.masking import mask_text
from kvmigrate.pg.migrations import SetupResult


@singledispatch
def to_dict(result: Any) -> Any:
    """The JSON form of a result (dataclasses by default)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: to_dict(getattr(result, f.name)) for f in dataclasses.fields(result)}
    if isinstance(result, (list, tuple)):
        return [to_dict(x) for x in result]
    if isinstance(result, dict):
        return {str(k): to_dict(v) for k, v in result.items()}
    if isinstance(result, (dt.datetime, dt.date)):
        return result.isoformat()
    return result


@to_dict.register
def _(result: SetupResult) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "applied": [m.filename for m in result.applied],
        "already_applied": [m.filename for m in result.already],
    }


@to_dict.register
def _(result: DoctorResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "kv_requests": result.kv_requests,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
    }


@singledispatch
def render(result: Any, console: Console) -> None:
    """Print the human form of a result."""
    console.print(result)


@render.register
def _(result: SetupResult, console: Console) -> None:
    if result.dry_run:
        if not result.applied:
            console.print("schema is up to date: nothing would be applied")
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


@render.register
def _(result: DemoResult, console: Console) -> None:
    console.print("== phase 1: setup", style="bold")
    render(result.setup, console)
    console.print("== doctor", style="bold")
    render(result.doctor, console)
    console.print("not built yet, so not run: " + ", ".join(result.steps_not_built))


def envelope(
    command: str,
    *,
    started: dt.datetime,
    exit_code: int,
    result: Any = None,
    error: str | None = None,
    hint: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The one JSON envelope every `--json` output uses (see schema/report.schema.json)."""
    body: dict[str, Any] = {
        "command": command,
        "version": __version__,
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "result": None if result is None else to_dict(result),
        "warnings": warnings or [],
    }
    if error is not None:
        body["error"] = {"message": error, "hint": hint}
    return body


def dumps(obj: Any, secrets: tuple[str, ...] = ()) -> str:
    """Serialise for stdout, masking every secret on the way out."""
    text = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
    return mask_text(text, secrets)
