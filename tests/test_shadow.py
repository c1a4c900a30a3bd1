"""`kvmigrate shadow`: the app's read views from KV and from Postgres, on real servers. After a
clean backfill every view matches; each purpose-built divergence is found field by field; the
billed tally equals the server's INFO commandstats and never passes --max-requests."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from kvmigrate import commands
from kvmigrate.config import build_config
from kvmigrate.errors import BudgetExhausted
from kvmigrate.seed import seed_keyspace
from kvmigrate.shadow_views import VIEWS
from tests.helpers import cli_json


def _config(pg_url: str, kv_url: str, **extra: object):
    return build_config(pg_url=pg_url, kv_url=kv_url, env={}, **extra)


def _backfilled(pg_url: str, kv_url: str):
    config = _config(pg_url, kv_url)
    commands.setup(config)
    commands.backfill(config)
    return config


def test_shadow_matches_every_view_after_a_clean_backfill_of_the_seeded_store(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=20, seed=7)
    config = _backfilled(pg_url, kv_url)
    result = commands.shadow(config, users=20)
    bad = {n: [(c.subject, c.differences) for c in s.first] for n, s in result.views.items() if s.first}
    assert result.clean, bad
    assert set(result.views) == set(VIEWS)
    assert all(s.checked > 0 for s in result.views.values()), {n: s.checked for n, s in result.views.items()}
