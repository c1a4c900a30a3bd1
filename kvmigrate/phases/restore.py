"""`kvmigrate restore`: put archived keys back, the undo of cleanup.

Rules (README, "restore"):
* The archive folder is locked for the whole run (a cleanup or restore already using it:
  ArchiveBusy, exit 1). Every listed file is checked against the manifest (length, sha256, line
  count) and the manifest's totals must add up; any mismatch refuses the run before anything is
  written (ArchiveCorrupt, exit 1). When a key was archived more than once, its last line wins.
* Each key is written whole and only while absent (`kvmigrate.adapters.kv.rebuild`): a killed run leaves
  whole keys, absent keys and at most temporary `kvmigrate:restore:*` keys that the next run
  deletes; no round trip is resent blindly (redis-py's own retries are off for this client), and
  every resend goes through the request budget.
* A key with a TTL gets its archived expiry time (`PXAT`/`PEXPIREAT`); one already expired is
  skipped and counted. A key that exists with an equal value is skipped; with a different value
  it is refused unless `force` (then replaced whole).
* Before writing, the billed commands are forecast (`restore_cost`) and the run needs `yes`;
  `dry_run` reads only and says what a run would restore and cost. `--max-requests` is a hard
  bound: a key is never started that the budget cannot finish.
* A run is clean only when everything deleted is restorable: part files in the folder that the
  manifest does not list, and (with a Postgres URL) ledger keys marked deleted that no archive
  line covers, are named and make the run exit 1. Restore writes KV only; flags are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.files.archive import (
    MANIFEST,
    ArchivedKey,
    FolderLock,
    check_counts,
    latest_lines,
    read_manifest,
    unlisted_files,
    verified_blobs,
)
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.rebuild import (
    REQUEST_BYTES,
    Command,
    archived_length,
    build_trips,
    length_command,
    one_shot,
    page_matches,
    read_pages,
    temp_key,
    value_bytes,
)
from kvmigrate.adapters.kv.scanner import encode_key, storable_name
from kvmigrate.adapters.pg import ledger
from kvmigrate.entities import ENTITIES
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.progress import Reporter, Tick, silent
from kvmigrate.phases.restore_cost import (
    EXAMPLES,
    RestoreCost,
    RestoreCounts,
    RestoreResult,
    clock_ms,
    has_expired,
    restore_cost,
)


def archive_restore_cost(config: Config, archive_dir: Path, *, entities: Sequence[str] = ()) -> RestoreCost:
    """`restore_cost` of an archive folder (checked as restore checks it), for a store where
    none of its keys exist. Reads the archive only."""
    manifest = read_manifest(archive_dir)
    check_counts(manifest)
    items = latest_lines(verified_blobs(archive_dir, manifest), entities)
    return restore_cost(items, batch_size=config.batch_size, setup=_setup(config.require_kv()))


def run_restore(config: Config, archive_dir: Path, *, entities: Sequence[str] = (), force: bool = False,
                yes: bool = False, dry_run: bool = False, report: Reporter = silent) -> RestoreResult:
    """Put archived keys back with their type and archived expiry. Writes KV only (no flag, no
    Postgres; with a Postgres URL it reads the ledger). Locks the folder and checks the archive
    first (ArchiveBusy / ArchiveCorrupt, exit 1); needs `yes` unless `dry_run` (ConfigError,
    exit 2, with the forecast). KV cost: see `restore_cost` (about 1 command per string, 2 per
    other key, 3 with a TTL, plus 1 EXISTS per batch); `dry_run` costs 1 EXISTS per batch and,
    where keys exist, 1 TYPE per key and the reads that compare them.
    """
    names = [e.name for e in ENTITIES if e.families]
    unknown = sorted(set(entities) - set(names))
    if unknown:
        raise ConfigError(f"no KV entity named {', '.join(unknown)}", hint="entities are: " + ", ".join(names))
    lock = FolderLock(archive_dir, "restore")
    try:
        return _run(config, archive_dir, entities or names, force=force, yes=yes, dry_run=dry_run, report=report)
    finally:
        lock.release()


def _run(config: Config, archive_dir: Path, entities: Sequence[str], *, force: bool, yes: bool,
         dry_run: bool, report: Reporter = silent) -> RestoreResult:
    manifest = read_manifest(archive_dir)
    check_counts(manifest)
    blobs = verified_blobs(archive_dir, manifest)
    items = latest_lines(blobs, entities)
    budget = RequestBudget(cap=config.max_requests, phase="restore")
    result = RestoreResult(str(archive_dir), str(archive_dir / MANIFEST), [f["name"] for f, _ in blobs], force,
                           budget, dry_run=dry_run, unlisted_files=unlisted_files(archive_dir, manifest))
    result.forecast = restore_cost(items, batch_size=config.batch_size, setup=_setup(config.require_kv()))
    if not (yes or dry_run):
        f = result.forecast
        raise ConfigError(f"restore writes {f.keys} archived keys back into KV, about {f.commands} billed KV "
                          "commands", hint="confirm with --yes, or see what it would restore and cost with --dry-run")
    _check_ledger(config, entities, items, result)
    kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=dry_run)
    kv.redis.set_retry(Retry(NoBackoff(), 0))  # no blind resend: _Sender decides what is safe to resend
    kv.retries = 0
    run = _Restore(kv, result, config.connect_retries)
    try:
        report(Tick("restore", 0, len(items)))
        for start in range(0, len(items), config.batch_size):
            run.batch(items[start:start + config.batch_size])
            done = min(start + config.batch_size, len(items))
            report(Tick("restore", done, len(items), note=f"{budget.spent:,} billed KV commands"))
        if dry_run:
            result.forecast = restore_cost(items, batch_size=config.batch_size, in_place=run.in_place,
                                           replaced=frozenset(run.replaced), setup=_setup(config.require_kv()))
    finally:
        result.kv_requests = budget.spent
        kv.redis.close()
    return result


def _setup(url: str) -> dict[str, int]:
    """What a new connection sends before the PING: AUTH with a password, SELECT for a db other
    than 0 (counted by the budget like any command)."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    return {"AUTH": int(bool(parts.password or parts.username)), "SELECT": int(db not in ("", "0"))}


def _check_ledger(config: Config, entities: Sequence[str], items: Sequence[ArchivedKey],
                  result: RestoreResult) -> None:
    """With a Postgres URL: name the keys the ledger marks deleted (for these entities) that no
    archive line covers. Read-only; skipped when the database has no kvmigrate ledger."""
    if not config.pg_url:
        return
    with connect_pg(config.pg_url, retries=config.connect_retries, autocommit=True) as conn:
        deleted = ledger.deleted_keys(conn, entities)
        if deleted is None:
            return
    covered = {storable_name(i.key)[0] for i in items}
    missing = sorted(deleted - covered)
    result.ledger_checked = True
    result.missing, result.missing_examples = len(missing), missing[:EXAMPLES]


class _Restore:
    """One run's KV side: batches of keys written whole, resent only where that is safe."""

    def __init__(self, kv: KvClient, result: RestoreResult, retries: int) -> None:
        self.kv, self.result, self.retries = kv, result, retries
        self.in_place: dict[str, int] = {}  # keys found in place: their comparison's page reads
        self.replaced: set[str] = set()

    def count(self, item: ArchivedKey) -> RestoreCounts:
        return self.result.entities.setdefault(item.entity, RestoreCounts())

    def batch(self, batch: Sequence[ArchivedKey]) -> None:
        """Write one batch: strings by SET NX, the others probed (1 EXISTS) and built whole;
        then compare the keys found in place."""
        now = clock_ms()
        live = []
        for item in batch:
            if has_expired(item, now):
                self.count(item).expired += 1
            else:
                live.append(item)
        shots = [i for i in live if one_shot(i)]
        built = [i for i in live if not one_shot(i)]
        occupied: list[ArchivedKey] = []
        uncertain: set[str] = set()
        lengths: dict[str, Any] = {}
        fresh = True
        if built:
            names = [encode_key(i.key) for i in built] + [temp_key(i.key) for i in built]
            if int(self.send([("EXISTS", *names)])[0]):
                fresh = False
                probes = self.send([length_command(i) for i in built])
                lengths = {i.key: r for i, r in zip(built, probes, strict=True)}
        if self.result.dry_run:
            self._dry(shots, built, lengths, fresh)
            return
        for item, replies, resent in self.write(shots, fresh=True, replace=False):
            self._settle(item, replies, resent, occupied, uncertain)
        absent = [i for i in built if not _present(lengths.get(i.key))]
        occupied += [i for i in built if _present(lengths.get(i.key))]
        for item, replies, resent in self.write(absent, fresh=fresh, replace=False):
            self._settle(item, replies, resent, occupied, uncertain)
            lengths.pop(item.key, None)  # found in place by its RENAMENX after all: read its length again
        self._occupied(occupied, lengths, uncertain)

    def _dry(self, shots: Sequence[ArchivedKey], built: Sequence[ArchivedKey], lengths: dict[str, Any],
             fresh: bool) -> None:
        """Dry run: which keys are in place (1 TYPE per string when the batch has any), and
        whether they are equal; counts `restored` as would-be restores."""
        there: list[ArchivedKey] = [i for i in built if _present(lengths.get(i.key))]
        if shots:
            names = [encode_key(i.key) for i in shots]
            if int(self.send([("EXISTS", *names)])[0]):
                types = self.send([("TYPE", n) for n in names])
                there += [i for i, t in zip(shots, types, strict=True) if _text(t) != "none"]
        keys = {i.key for i in there}
        for item in [*shots, *built]:
            if item.key not in keys:
                self.count(item).restored += 1
        self._occupied(there, {k: v for k, v in lengths.items() if k in keys}, set())

    def _settle(self, item: ArchivedKey, replies: Sequence[Any], resent: bool, occupied: list[ArchivedKey],
                uncertain: set[str]) -> None:
        """Count one key from its write's replies (the last is SET/RENAMENX/RENAME)."""
        counts = self.count(item)
        errors = [r for r in replies[:-1] if isinstance(r, Exception)]
        last = replies[-1]
        if resent:
            uncertain.add(item.key)
        if errors or (isinstance(last, Exception) and "no such key" not in str(last).lower()):
            counts.failed += 1
            self.result.failed.append((item.key, str((errors or [last])[0])))
        elif isinstance(last, Exception):  # the temporary key expired before the rename
            counts.expired += 1
        elif last is None or last is False or last == 0:
            occupied.append(item)
        else:
            counts.restored += 1

    def _occupied(self, items: Sequence[ArchivedKey], lengths: dict[str, Any], uncertain: set[str]) -> None:
        """Compare the keys found in place with the archive: equal ones are skipped (a key whose
        write was resent and is found equal counts as restored), different ones refused, or
        replaced whole when forced. Costs a length per key not probed yet, the paged reads of
        those whose length matches, and a DEL of each temporary key (not in a dry run)."""
        if not items:
            return
        need = [i for i in items if i.key not in lengths]
        for item, reply in zip(need, self.send([length_command(i) for i in need]), strict=True):
            lengths[item.key] = reply
        same = [i for i in items if not isinstance(lengths[i.key], Exception)
                and int(lengths[i.key]) == archived_length(i)]
        pages = [(i, p) for i in same for p in read_pages(i)]
        cleanup: list[Command] = [] if self.result.dry_run else [("DEL", temp_key(i.key)) for i in items
                                                                if not one_shot(i)]
        equal = {i.key for i in same}
        for item, _ in pages:
            self.in_place[item.key] = self.in_place.get(item.key, 0) + 1
        for item in items:
            self.in_place.setdefault(item.key, 0)
        for group in _groups(pages):
            for (item, page), reply in zip(group, self.send([p.cmd for _, p in group]), strict=True):
                if not page_matches(item, page, reply):
                    equal.discard(item.key)
        if cleanup:
            self.send(cleanup)
        for item in items:
            self._verdict(item, item.key in equal, item.key in uncertain)

    def _verdict(self, item: ArchivedKey, equal: bool, uncertain: bool) -> None:
        counts = self.count(item)
        if equal:
            if uncertain:
                counts.restored += 1
            else:
                counts.equal += 1
        elif not self.result.force:
            counts.refused += 1
            self.result.refused.append(item.key)
        elif self.result.dry_run:
            counts.overwritten += 1
            self.replaced.add(item.key)
        else:
            for it, replies, _ in self.write([item], fresh=False, replace=True):
                errors = [r for r in replies if isinstance(r, Exception)]
                if errors:
                    counts.failed += 1
                    self.result.failed.append((it.key, str(errors[0])))
                else:
                    counts.overwritten += 1

    def write(self, items: Sequence[ArchivedKey], *, fresh: bool, replace: bool,
              ) -> list[tuple[ArchivedKey, list[Any], bool]]:
        """Write keys whole: small ones many per round trip, a big one in its own round trips.
        Returns (key, its replies, whether it was resent)."""
        out: list[tuple[ArchivedKey, list[Any], bool]] = []
        single = [len(build_trips(i, fresh=False, replace=replace)) == 1 for i in items]
        small = [i for i, one in zip(items, single, strict=True) if one]
        big = [i for i, one in zip(items, single, strict=True) if not one]
        for group in _item_groups(small):
            out += self._unit(group, fresh=fresh, replace=replace)
        for item in big:
            out += self._unit([item], fresh=fresh, replace=replace)
        return out

    def _unit(self, items: Sequence[ArchivedKey], *, fresh: bool, replace: bool,
              ) -> list[tuple[ArchivedKey, list[Any], bool]]:
        """Send one unit's round trips; after a lost reply, wait and send the whole unit again
        with its temporary keys deleted first (safe whatever part of it ran). The budget must
        cover the whole unit before its first round trip."""
        def make(first: bool) -> tuple[list[list[Command]], list[int]]:
            per = [build_trips(i, fresh=fresh and first, replace=replace) for i in items]
            if len(per) == 1:
                return per[0], [sum(len(t) for t in per[0])]
            return [[c for trips in per for c in trips[0]]], [sum(len(t) for t in trips) for trips in per]

        trips, spans = make(True)
        for attempt in range(self.retries + 1):
            # the whole unit or nothing; a resend also reconnects (AUTH, SELECT: counted, not checked)
            self.kv.budget.check(sum(len(t) for t in trips) + (2 if attempt else 0))
            try:
                replies = []
                for trip in trips:
                    got = self.kv.pipeline(trip)
                    replies += got
                    if len(trips) > 1 and any(isinstance(r, Exception) for r in got):
                        break  # a big key stops at its first error: never renamed half built
                break
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                self._lost(attempt)
                trips, spans = make(False)
        resent = attempt > 0
        out, at = [], 0
        for item, n in zip(items, spans, strict=True):
            mine = replies[at:at + n] or [redis.ResponseError("stopped before the rename")]
            out.append((item, mine, resent))
            at += n
        return out

    def send(self, cmds: Sequence[Command]) -> list[Any]:
        """One round trip of reads (or DELs), resent as is after a lost reply."""
        for attempt in range(self.retries + 1):
            try:
                return self.kv.pipeline(cmds)
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                self._lost(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _lost(self, attempt: int) -> None:
        self.result.resends += 1
        time.sleep(min(0.2 * 2 ** attempt, 5.0))


def _present(reply: Any) -> bool:
    return isinstance(reply, Exception) or (reply is not None and int(reply) > 0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _item_groups(items: Sequence[ArchivedKey]) -> list[list[ArchivedKey]]:
    """Keys in groups whose values add up to under REQUEST_BYTES (one round trip each)."""
    groups: list[list[ArchivedKey]] = [[]]
    used = 0
    for item in items:
        n = value_bytes(item) + len(item.key) * 2 + 200
        if groups[-1] and used + n > REQUEST_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += n
    return [g for g in groups if g]


def _groups(pages: Sequence[tuple[ArchivedKey, Any]]) -> list[list[tuple[ArchivedKey, Any]]]:
    """Read pages in round trips of about REQUEST_BYTES of expected reply."""
    groups: list[list[tuple[ArchivedKey, Any]]] = [[]]
    used = 0
    for item, page in pages:
        n = min(value_bytes(item), REQUEST_BYTES)
        if groups[-1] and used + n > REQUEST_BYTES:
            groups.append([])
            used = 0
        groups[-1].append((item, page))
        used += n
    return [g for g in groups if g]
