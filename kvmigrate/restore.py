"""`kvmigrate restore`: put archived keys back, the undo of cleanup.

Rules: restore verifies every listed archive file against the manifest first and refuses on any
mismatch (ArchiveCorrupt, exit 1). When a key was archived more than once (a rerun), its last
line wins. A key with a TTL gets the time it had left (`expires_at_ms` − now); one already
expired is skipped and counted. A key that exists with an equal value is skipped; with a
different value it is refused unless `force` (then replaced). Restore writes KV only and
changes no phase flag.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmigrate.archive import MANIFEST, ArchivedKey, latest_lines, read_manifest, verified_blobs
from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv
from kvmigrate.entities import ENTITIES
from kvmigrate.errors import ConfigError
from kvmigrate.kv.client import KvClient
from kvmigrate.kv.scanner import encode_key
from kvmigrate.kv.snapshot import SnapshotReader, canonical

FLAGS_UNCHANGED = ("phase flags are unchanged: restore writes KV only, and the app keeps reading and "
                   "writing what its flags say (see `kvmigrate status`)")


@dataclass
class RestoreCounts:
    restored: int = 0
    equal: int = 0
    overwritten: int = 0
    refused: int = 0
    expired: int = 0
    failed: int = 0


@dataclass
class RestoreResult:
    archive_dir: str
    manifest: str
    files_verified: list[str]
    force: bool
    budget: RequestBudget
    entities: dict[str, RestoreCounts] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    kv_requests: int = 0
    flags: str = FLAGS_UNCHANGED

    @property
    def clean(self) -> bool:
        return not (self.refused or self.failed)


def run_restore(config: Config, archive_dir: Path, *, entities: Sequence[str] = (),
                force: bool = False) -> RestoreResult:
    """Put archived keys back with their type and remaining TTL. Writes KV only (no flag, no
    Postgres). Verifies every file against the manifest first (ArchiveCorrupt, exit 1).

    Costs per batch of `batch_size` keys: 1 EVAL to read what is there (or 1 + 2 per existing
    key without scripting), plus one pipeline of about 2 commands per restored key.
    """
    names = [e.name for e in ENTITIES if e.families]
    unknown = sorted(set(entities) - set(names))
    if unknown:
        raise ConfigError(f"no KV entity named {', '.join(unknown)}", hint="entities are: " + ", ".join(names))
    manifest = read_manifest(archive_dir)
    blobs = verified_blobs(archive_dir, manifest)
    items = latest_lines(blobs, entities)
    budget = RequestBudget(cap=config.max_requests, phase="restore")
    result = RestoreResult(str(archive_dir), str(archive_dir / MANIFEST), [f["name"] for f, _ in blobs], force, budget)
    kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries)
    try:
        reader = SnapshotReader(kv)
        for start in range(0, len(items), config.batch_size):
            _restore_batch(kv, reader, items[start:start + config.batch_size], result)
    finally:
        result.kv_requests = budget.spent
        kv.redis.close()
    return result


def _restore_batch(kv: KvClient, reader: SnapshotReader, batch: Sequence[ArchivedKey], result: RestoreResult) -> None:
    now_ms = int(time.time() * 1000)
    cmds: list[tuple[Any, ...]] = []
    planned: list[tuple[ArchivedKey, int, bool]] = []  # (item, commands, replaces an existing key)
    for item, snap in zip(batch, reader.read([i.key for i in batch]), strict=True):
        counts = result.entities.setdefault(item.entity, RestoreCounts())
        ttl = None if item.expires_at_ms is None else item.expires_at_ms - now_ms
        if ttl is not None and ttl <= 0:
            counts.expired += 1
            continue
        replace = snap.rtype != "none"
        if replace and snap.rtype != "?" and canonical(snap.rtype, snap.parts) == canonical(item.rtype, item.parts):
            counts.equal += 1
            continue
        if replace and not result.force:
            counts.refused += 1
            result.refused.append(item.key)
            continue
        writes = ([("DEL", encode_key(item.key))] if replace else []) + write_commands(item, ttl)
        cmds += writes
        planned.append((item, len(writes), replace))
    replies = iter(kv.pipeline(cmds))
    for item, n, replace in planned:
        counts = result.entities[item.entity]
        errors = [r for r in (next(replies) for _ in range(n)) if isinstance(r, Exception)]
        if errors:
            counts.failed += 1
            result.failed.append((item.key, str(errors[0])))
        elif replace:
            counts.overwritten += 1
        else:
            counts.restored += 1


def write_commands(item: ArchivedKey, ttl_ms: int | None, *, chunk: int = 1000) -> list[tuple[Any, ...]]:
    """The commands that recreate one key (containers in chunks of `chunk` elements)."""
    key, p = encode_key(item.key), item.parts
    if item.rtype == "string":
        cmds: list[tuple[Any, ...]] = [("SET", key, p[0])]
    elif item.rtype in ("hash", "zset"):
        verb = "HSET" if item.rtype == "hash" else "ZADD"
        pairs = list(zip(p[0::2], p[1::2], strict=True))
        if verb == "ZADD":
            pairs = [(s, m) for m, s in pairs]
        cmds = [(verb, key, *[x for pair in pairs[i:i + chunk] for x in pair]) for i in range(0, len(pairs), chunk)]
    else:
        verb = "RPUSH" if item.rtype == "list" else "SADD"
        cmds = [(verb, key, *p[i:i + chunk]) for i in range(0, len(p), chunk)]
    if ttl_ms is not None:
        cmds.append(("PEXPIRE", key, ttl_ms))
    return cmds
