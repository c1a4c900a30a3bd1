"""Measure a full `kvmigrate verify` (rows mode, no re-check delay) after a backfill.

Run through `bench/worker.py verify`. Read-only on KV; writes only kvmigrate's records.
"""

from __future__ import annotations

import time
from typing import Any

from kvmigrate import api as commands
from kvmigrate.model.config import build_config


def measure_verify(*, pg_url: str, kv_url: str, keys: int, mode: str = "rows") -> dict[str, Any]:
    """One full verify; keys/s is the store's `keys` over the run's wall time."""
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    started = time.perf_counter()
    result = commands.verify(config, mode=mode, recheck_delay=0)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "keys": keys,
        "keys_per_s": keys / seconds,
        "clean": result.clean,
        "checked": sum(e.checked for e in result.entities.values()),
        "kv_total": result.budget.spent,
        "kv": dict(result.budget.by_command),
    }
