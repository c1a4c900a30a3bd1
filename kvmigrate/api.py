"""The library API: one function per command. Each returns a result object and prints nothing.

    from kvmigrate import api
    from kvmigrate.model.config import build_config
    result = api.setup(build_config(pg_url="postgresql://..."), dry_run=True)

The functions live with their phases (kvmigrate.phases.*) and are re-exported here, not
re-declared: the signature and docstring you read are the phase's own. Below them, the few
library names the faces (cli/, tryout/) need, so that they reach the library through this module.
"""

# ruff: noqa: I001  (grouped by purpose, not sorted)
from __future__ import annotations

# The commands, in the order of a migration
from kvmigrate.phases.setup import setup as setup
from kvmigrate.phases.doctor import doctor as doctor
from kvmigrate.phases.inventory import inventory as inventory
from kvmigrate.phases.inventory import keys_by_owner as keys_by_owner
from kvmigrate.phases.plan import plan as plan
from kvmigrate.phases.backfill import backfill as backfill
from kvmigrate.phases.verify import verify as verify
from kvmigrate.phases.cutover import dual_write as dual_write
from kvmigrate.phases.shadow import run_shadow as shadow
from kvmigrate.phases.cutover import cutover as cutover
from kvmigrate.phases.cutover import cleanup as cleanup
from kvmigrate.phases.restore import run_restore as restore
from kvmigrate.phases.restore import archive_restore_cost as restore_forecast
from kvmigrate.phases.status import status as status
from kvmigrate.phases.status import ledger_and_rejects as ledger_and_rejects
from kvmigrate.phases.rejects import rejects as rejects
from kvmigrate.phases.rehearse import rehearse as rehearse
from kvmigrate.phases.prisma import prisma as prisma

# Defaults and result types the faces show
from kvmigrate.engine.phases import DEFAULT_SETTLE as DEFAULT_SETTLE
from kvmigrate.engine.phases import FLAGS_KEY as FLAGS_KEY
from kvmigrate.phases.cutover import DEFAULT_ARCHIVE_DIR as DEFAULT_ARCHIVE_DIR
from kvmigrate.phases.shadow import ShadowResult as ShadowResult

# Connections: the CLI's error mapping, and the one KV client (every command charged to a budget)
from kvmigrate.adapters.connections import connect_kv as connect_kv
from kvmigrate.adapters.connections import connection_errors as connection_errors
from kvmigrate.adapters.kv.client import KvClient as KvClient

# What the demo's simulated app shares with the library: the entities (their transformers give
# the rows the app writes), the canonical handle rule, and the JSON form the loader writes
from kvmigrate.adapters.pg.loader import json_dumps as json_dumps
from kvmigrate.entities import ENTITIES as ENTITIES
from kvmigrate.entities import Entity as Entity
from kvmigrate.entities.common import Bad as Bad
from kvmigrate.entities.common import handle as handle

__all__ = [
    "setup",
    "doctor",
    "inventory",
    "keys_by_owner",
    "plan",
    "backfill",
    "verify",
    "dual_write",
    "shadow",
    "cutover",
    "cleanup",
    "restore",
    "restore_forecast",
    "status",
    "ledger_and_rejects",
    "rejects",
    "rehearse",
    "prisma",
    "DEFAULT_SETTLE",
    "FLAGS_KEY",
    "DEFAULT_ARCHIVE_DIR",
    "ShadowResult",
    "connect_kv",
    "connection_errors",
    "KvClient",
    "json_dumps",
    "ENTITIES",
    "Entity",
    "Bad",
    "handle",
]
