"""`kvmigrate seed`: the seed keyspace written to the configured KV store, and the memory files."""

from __future__ import annotations

from pathlib import Path

from kvmigrate.api import connect_kv
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.tryout.seed.keyspace import SeedRun, seed_keyspace
from kvmigrate.tryout.seed.memories import write_memory_files


def run_seed(config: Config, *, users: int = 46, seed: int = 7, scale: int = 1, force: bool = False,
             memories_dir: Path | None = None) -> SeedRun:
    """Write a realistic, deterministic /vibe keyspace (and memory files) for trying kvmigrate.

    Writes KV: one command per key; refuses a non-empty logical db unless `force`.
    """
    client = connect_kv(config.require_kv(), RequestBudget(cap=None, phase="seed"), retries=config.connect_retries)
    try:
        result = seed_keyspace(client, users=users, seed=seed, scale=scale, force=force)
    finally:
        client.redis.close()
    memories = None if memories_dir is None else write_memory_files(memories_dir, users=users, seed=seed)
    return SeedRun(result, memories, str(memories_dir) if memories_dir else None)
