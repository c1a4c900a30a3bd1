"""Measure `kvmigrate backfill` (fresh load, then the no-change rerun) on given servers.

Run through `bench/worker.py backfill` so the peak RSS is the backfill's own. Read-only on KV;
writes the Postgres database it is given.
"""

from __future__ import annotations

import time
from typing import Any

from kvmigrate import api as commands
from kvmigrate.model.config import build_config


def measure_backfill(*, pg_url: str, kv_url: str, keys: int, scan_count: int = 1000, setup: bool = True,
                     entities: list[str] | None = None) -> dict[str, Any]:
    """One backfill run; keys/s is the store's `keys` over the run's wall time. `kv_total` is
    the billed KV commands (what the server counts, free commands aside)."""
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=scan_count)
    if setup:
        commands.setup(config)
    started = time.perf_counter()
    result = commands.backfill(config, entities=entities or ())
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "keys": keys,
        "keys_per_s": keys / seconds,
        "records": sum(t.scanned for t in result.tallies.values()),
        "rows_written": sum(t.rows_written for t in result.tallies.values()),
        "rejected": result.rejected,
        "kv_total": result.budget.spent,
        "kv": dict(result.budget.by_command),
    }
