"""`kvmigrate rehearse`: the whole data path against a throwaway database, for CI.

Runs setup, an inventory, a full backfill (restarted from the first key, so its cost is a whole
backfill's) and a full verify into the database at `--pg-url`, which must be a branch or scratch
copy: rehearse writes rows there. The KV store is only read: every KV connection is opened
read-only, which refuses any write command before it is sent, and no phase flag is touched.

Verify re-copies rows the live app changed between the backfill and the verify (the branch is
scratch, so this is harmless) and counts them as `repaired`; differences that survive that re-copy
fail the rehearse. The report (JSON envelope and Markdown) says what the real migration will meet:
rejects by reason, differences, unknown key patterns, and its KV cost.

Cost of a rehearse: an inventory plus a backfill plus a verify, about 6 KV commands per 1,000 keys.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.files.private import write_private
from kvmigrate.adapters.pg import ledger, results
from kvmigrate.adapters.pg.migrations import SetupResult, apply_migrations
from kvmigrate.engine.diff import FILE_PREFIX
from kvmigrate.model.config import Config
from kvmigrate.model.errors import BudgetExhausted, DifferencesFound, KvmigrateError, RejectsPresent
from kvmigrate.model.masking import mask_text
from kvmigrate.model.rehearse_markdown import COST_ROWS, FORECAST_NOTE, to_markdown
from kvmigrate.model.serial import dumps, envelope, to_dict
from kvmigrate.phases.backfill import run_backfill
from kvmigrate.phases.backfill_result import BackfillResult, Progress
from kvmigrate.phases.inventory import InventoryResult, run_inventory
from kvmigrate.phases.shadow import ShadowResult, run_shadow
from kvmigrate.phases.verify import VerifyResult, run_verify

COMMAND = "rehearse"


@dataclass(frozen=True)
class Check:
    """One pass/fail condition of the rehearse; `exit_code` is the exit status when it fails."""

    name: str
    ok: bool
    exit_code: int
    detail: str


@dataclass(frozen=True)
class CostForecast:
    """KV commands of the real migration, forecast from this rehearse. An estimate.

    The real run is one backfill, one verify, the archive (a SCAN per page plus one read script
    per page) and the delete (one script per page of deletable keys). The backfill and verify
    figures are what this rehearse spent doing the same work; `backfill_predicted` is the
    inventory's model of the backfill, shown beside it as a cross-check.
    """

    backfill_predicted: int
    backfill: int
    verify: int
    archive: int
    delete: int
    rehearse: int

    @property
    def real_run(self) -> int:
        return self.backfill + self.verify + self.archive + self.delete


@dataclass(frozen=True)
class RejectGroup:
    """Rejects of one entity for one reason, with one example key (never the value)."""

    entity: str
    reason: str
    count: int
    example_key: str


@dataclass
class RehearseResult:
    setup: SetupResult
    inventory: InventoryResult
    backfill: BackfillResult
    verify: VerifyResult
    rejects: list[RejectGroup]
    deletable_keys: int
    cost: CostForecast
    shadow: ShadowResult | None = None  # the app's read views, KV vs the branch database
    checks: list[Check] = field(default_factory=list)
    report_path: str | None = None
    markdown_path: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """The exit status of the first failing check (differences, rejects, cost), else 0."""
        return next((c.exit_code for c in self.checks if not c.ok), 0)


def rehearse(
    config: Config,
    *,
    report: Path | None = None,
    markdown: Path | None = None,
    max_rejects: int | None = None,
    max_requests_real: int | None = None,
    memories_dir: Path | None = None,
    repair: bool = True,
    progress: Progress | None = None,
) -> RehearseResult:
    """Rehearse the migration into a branch or scratch database (CI): setup, inventory, backfill,
    verify, and a report (JSON and Markdown; 0600; the Markdown next to the JSON, as `.md`, unless
    `markdown` says where) with the real run's forecast KV cost.

    Reads KV strictly read-only (about 6 commands per 1,000 keys). Writes Postgres at `config.pg_url` (schema, rows, kvmigrate's records); never writes KV.
    Fails (see `RehearseResult.exit_code`) on differences (1), on more than `max_rejects` rejects
    (5), and when the forecast KV cost of the real run exceeds `max_requests_real` (4). When an
    error stops the rehearse, the reports are still written (with the error) and it is re-raised.
    """
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    if report is not None and markdown is None:  # beside the JSON, never over it
        markdown = report.with_name(report.name + ".md") if report.suffix == ".md" else report.with_suffix(".md")
    try:
        result = _rehearse(config, memories_dir=memories_dir, repair=repair, progress=progress)
    except KvmigrateError as exc:
        _write_reports(config, started, report, markdown, error=exc)
        raise
    except Exception as exc:  # a bug: CI still gets a report that says what stopped the rehearse
        _write_reports(config, started, report, markdown,
                       error=KvmigrateError(f"unexpected {type(exc).__name__}: {exc}",
                                            hint="rerun with --traceback and report it"))
        raise
    result.checks = checks(result, max_rejects=max_rejects, max_requests_real=max_requests_real)
    result.report_path = str(report) if report else None
    result.markdown_path = str(markdown) if markdown else None
    result.seconds = time.perf_counter() - clock
    _write_reports(config, started, report, markdown, result=result)
    return result


def _rehearse(config: Config, *, memories_dir: Path | None, repair: bool,
              progress: Progress | None) -> RehearseResult:
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        setup = apply_migrations(conn, app_schema=config.pg_schema)
    inventory = run_inventory(config)
    backfill = run_backfill(config, restart=True, memories_dir=memories_dir, progress=progress)
    verify = run_verify(config, recheck_delay=0, repair=repair, memories_dir=memories_dir)
    shadow = run_shadow(config, recheck_delay=0)  # KV read-only; as cutover --require-shadow would ask
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        rejects = reject_groups(conn)
        deletable = deletable_keys(conn)
    cost = forecast(inventory, backfill, verify, deletable, batch_size=config.batch_size)
    return RehearseResult(setup, inventory, backfill, verify, rejects, deletable, cost, shadow)


def reject_groups(conn: psycopg.Connection) -> list[RejectGroup]:
    """Rejects by entity and reason, with the first key of each. Read-only."""
    return [RejectGroup(*group) for group in results.reject_groups(conn)]


def deletable_keys(conn: psycopg.Connection) -> int:
    """KV keys a cleanup could delete now: every ledger row of the key is verified. Read-only."""
    return ledger.deletable_keys(conn, FILE_PREFIX)


def forecast(inventory: InventoryResult, backfill: BackfillResult, verify: VerifyResult,
             deletable: int, *, batch_size: int) -> CostForecast:
    """The real run's KV cost: measured backfill and verify, estimated archive and delete."""
    return CostForecast(
        backfill_predicted=inventory.predicted_backfill,
        backfill=backfill.budget.spent,
        verify=verify.budget.spent,
        # cleanup's one pass as plan models it (kvmigrate.plan): DBSIZE before and after, per page
        # SCAN, WATCH, the reads; MULTI, DEL, EXEC per page with candidates
        archive=2 + inventory.cleanup.commands - 3 * inventory.candidate_pages,
        delete=3 * inventory.candidate_pages if deletable else 0,
        rehearse=inventory.budget.spent + backfill.budget.spent + verify.budget.spent,
    )


def checks(result: RehearseResult, *, max_rejects: int | None, max_requests_real: int | None) -> list[Check]:
    """The three conditions a rehearse passes or fails on, in the order their exit codes win."""
    diffs = sum(len(c.missing) + len(c.extra) + len(c.different) for c in result.verify.entities.values())
    shadow = result.shadow
    views_off = 0 if shadow is None else sum(s.checked - s.matched for s in shadow.views.values())
    rejected = result.backfill.rejected
    cost = result.cost.real_run
    return [
        Check("differences", diffs == 0, DifferencesFound.exit_code,
              f"{diffs} differences after verify" + ("" if diffs == 0 else " (see verify in the report)")),
        Check("shadow", views_off == 0, DifferencesFound.exit_code,
              f"{views_off} of the app's read views differ between KV and Postgres"
              + ("" if views_off == 0 else " (see shadow in the report)")),
        Check("rejects", max_rejects is None or rejected <= max_rejects, RejectsPresent.exit_code,
              f"{rejected} rejects" + (" (no limit set: --max-rejects)" if max_rejects is None
                                       else f", limit {max_rejects}")),
        Check("kv_cost", max_requests_real is None or cost <= max_requests_real, BudgetExhausted.exit_code,
              f"real run forecast {cost} KV requests" + (" (no limit set: --max-requests)"
                                                          if max_requests_real is None
                                                          else f", limit {max_requests_real}")),
    ]


def _write_reports(config: Config, started: dt.datetime, report: Path | None, markdown: Path | None, *,
                   result: RehearseResult | None = None, error: KvmigrateError | None = None) -> None:
    """Write the JSON envelope and its Markdown summary (secrets masked)."""
    if report is None and markdown is None:
        return
    body: dict[str, Any]
    if result is not None:
        body = envelope(COMMAND, started=started, exit_code=result.exit_code, result=result)
    else:
        assert error is not None
        body = envelope(COMMAND, started=started, exit_code=error.exit_code, error=error.message, hint=error.hint)
    if report is not None:
        _write(report, dumps(body, config.secrets) + "\n")
    if markdown is not None:
        _write(markdown, mask_text(to_markdown(body), config.secrets))


def _write(path: Path, text: str) -> None:
    """Write a report readable by its owner only (it holds values from the store)."""
    write_private(path, text.encode("utf-8"))


@to_dict.register
def _(r: RehearseResult) -> dict[str, Any]:
    backfill, verify = to_dict(r.backfill), to_dict(r.verify)
    return {
        "ok": r.ok,
        "exit_code": r.exit_code,
        "checks": [to_dict(c) for c in r.checks],
        "summary": {
            "records_scanned": sum(t["scanned"] for t in backfill["entities"].values()),
            "migrated": sum(t["migrated"] for t in backfill["entities"].values()),
            "rejects": r.backfill.rejected,
            "differences": sum(len(e[k]) for e in verify["entities"].values() for k in ("missing", "extra", "different")),
            "repaired": sum(e["repaired"] for e in verify["entities"].values()),
            "unknown_keys": sum(info["keys"] for info in backfill["unknown_patterns"].values()),
            "deletable_keys": r.deletable_keys,
        },
        "rejects": [to_dict(g) for g in r.rejects],
        "kv_requests": {**{k: getattr(r.cost, k) for k, _ in COST_ROWS}, "estimate": True, "note": FORECAST_NOTE},
        "setup": to_dict(r.setup),
        "inventory": to_dict(r.inventory),
        "backfill": backfill,
        "verify": verify,
        "shadow": None if r.shadow is None else to_dict(r.shadow),
        "report_path": r.report_path,
        "markdown_path": r.markdown_path,
        "seconds": round(r.seconds, 3),
    }
