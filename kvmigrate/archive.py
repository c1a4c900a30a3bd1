"""The cleanup archive (lossless JSONL.gz + manifest), how keys are read for it, and `restore`.

Archive rules (README, "Data rules"):
* Layout: one file per entity and run, `<entity>.jsonl.gz` for the first cleanup run into a
  folder and `<entity>.part<N>.jsonl.gz` for the N-th; a file is never rewritten, so a rerun
  into the same folder keeps every earlier line. `manifest.json` lists every file with its
  sha256, byte length and line count, the runs, counts per entity, the masked KV URL, the time
  and the kvmigrate version.
* One JSON line per key: `key`, `entity`, `type`, `value`, `ttl_ms` (PTTL when read, or null),
  `expires_at_ms`, `archived_at`, `run_id`. Every byte string is a JSON string when it is valid
  UTF-8, else `{"encoding": "base64", "data": …}` (per element inside containers). Hashes are
  `[[field, value], …]` and sorted sets `[[member, score], …]` in server order, the score as
  text that reads back as the same double ("1.5", "inf"; the server's own text when scripting
  is available).
* Durability: files and the manifest are created with mode 0600 (the folder 0700). Each batch
  is one gzip member appended and fsynced, then the directory is fsynced, then the manifest is
  replaced atomically (fsynced temp file + rename): the manifest always covers every line that
  any delete may depend on, so a run stopped at any point leaves a verifiable archive.
* Restore verifies every listed file against the manifest first and refuses on any mismatch.
  When a key was archived more than once (a rerun), its last line wins. A key with a TTL gets
  the time it had left (`expires_at_ms` − now); one already expired is skipped and counted.
  A key that exists with an equal value is skipped; with a different value it is refused
  unless `force` (then replaced). Restore writes KV only and changes no phase flag.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import time
from base64 import b64decode, b64encode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import redis

from kvmigrate import __version__
from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv
from kvmigrate.entities import ENTITIES
from kvmigrate.errors import ConfigError, KvmigrateError
from kvmigrate.kv.client import KvClient
from kvmigrate.kv.scanner import decode_key, encode_key
from kvmigrate.records import RawValue

FORMAT = "kvmigrate-archive/1"
MANIFEST = "manifest.json"
_PART_RE = re.compile(r"^(?P<entity>[a-z_]+)(?:\.part(?P<part>\d+))?\.jsonl\.gz$")
FLAGS_UNCHANGED = ("phase flags are unchanged: restore writes KV only, and the app keeps reading and "
                   "writing what its flags say (see `kvmigrate status`)")

# Shared by the read and the compare-and-delete scripts: a key's parts in server order, and
# the digest of `<type>\n` followed by `<length>:<bytes>` for each part (sha1, server side).
LUA_LIB = """
local function parts_of(t, k)
  if t == 'string' then return {redis.call('GET', k)}
  elseif t == 'hash' then return redis.call('HGETALL', k)
  elseif t == 'list' then return redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then return redis.call('SMEMBERS', k)
  elseif t == 'zset' then return redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  end
  return nil
end
local function digest(t, parts)
  local buf = {t, '\\n'}
  for i = 1, #parts do buf[#buf + 1] = #parts[i] .. ':' .. parts[i] end
  return redis.sha1hex(table.concat(buf))
end
"""
READ_SCRIPT = LUA_LIB + """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local parts = parts_of(t, k)
  if parts then out[i] = {t, parts, redis.call('PTTL', k), digest(t, parts)} else out[i] = {t} end
end
return out
"""
_READS: dict[str, tuple[Any, ...]] = {
    "string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", 0, -1), "set": ("SMEMBERS",),
    "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
}


class ArchiveCorrupt(KvmigrateError):
    """An archive file is missing or does not match its manifest; nothing was restored."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A key as read: type ("none" when absent, "?" when it changed type while read), its parts
    in server order (hash/zset flattened; scores as the server prints them), PTTL, digest."""

    key: str
    rtype: str
    parts: tuple[bytes, ...] = ()
    pttl: int | None = None
    digest: str | None = None

    def raw_value(self) -> RawValue:
        """The value in the shape the scanner gives transformers (what the ledger digests)."""
        return raw_value(self.rtype, self.parts)


def raw_value(rtype: str, parts: Sequence[bytes]) -> RawValue:
    if rtype == "string":
        return parts[0]
    if rtype == "hash":
        return dict(zip(parts[0::2], parts[1::2], strict=True))
    if rtype == "zset":
        return [(m, float(s)) for m, s in zip(parts[0::2], parts[1::2], strict=True)]
    return list(parts)


def server_digest(rtype: str, parts: Iterable[bytes]) -> str:
    """The same digest the Lua scripts compute (used when scripting is refused)."""
    h = hashlib.sha1(rtype.encode() + b"\n", usedforsecurity=False)
    for part in parts:
        h.update(b"%d:" % len(part))
        h.update(part)
    return h.hexdigest()


def canonical(rtype: str, parts: Sequence[bytes]) -> tuple[object, ...]:
    """A value in a form where equal values compare equal (hash and set order ignored)."""
    if rtype == "hash":
        return (rtype, tuple(sorted(zip(parts[0::2], parts[1::2], strict=True))))
    if rtype == "set":
        return (rtype, tuple(sorted(parts)))
    if rtype == "zset":
        return (rtype, tuple(sorted((float(s), m) for m, s in zip(parts[0::2], parts[1::2], strict=True))))
    return (rtype, tuple(parts))


def raw_replies(kv: KvClient) -> KvClient:
    """Make this client keep HGETALL/SMEMBERS/ZRANGE replies in server order (no dict/set
    conversion by the client library), as the Lua scripts see them."""
    for command in ("HGETALL", "SMEMBERS", "ZRANGE"):
        kv.redis.set_response_callback(command, lambda reply, **_: reply)
    return kv


class SnapshotReader:
    """Reads keys with type, value, PTTL and digest: 1 EVAL per batch, or, where scripting is
    refused, 1 TYPE per key plus 2 commands per existing key in two pipelines. Read-only."""

    def __init__(self, kv: KvClient, *, use_eval: bool = True) -> None:
        self.kv = raw_replies(kv)
        self.use_eval = use_eval
        self.fallback_reason: str | None = None

    def read(self, keys: Sequence[str]) -> list[Snapshot]:
        if not keys:
            return []
        if self.use_eval:
            try:
                reply = self.kv.eval_ro(READ_SCRIPT, [encode_key(k) for k in keys])
                return [_from_script(k, item) for k, item in zip(keys, reply, strict=True)]
            except redis.ResponseError as exc:
                self.use_eval = False
                self.fallback_reason = str(exc).splitlines()[0]
        return self.read_pipelined(keys)

    def read_pipelined(self, keys: Sequence[str]) -> list[Snapshot]:
        types = [_text(t) for t in self.kv.pipeline([("TYPE", encode_key(k)) for k in keys])]
        readable = [(k, t) for k, t in zip(keys, types, strict=True) if t in _READS]
        cmds: list[tuple[Any, ...]] = []
        for key, rtype in readable:
            verb, *args = _READS[rtype]
            cmds += [(verb, encode_key(key), *args), ("PTTL", encode_key(key))]
        replies = iter(self.kv.pipeline(cmds))
        found: dict[str, Snapshot] = {}
        for key, rtype in readable:
            value, pttl = next(replies), next(replies)
            if isinstance(value, Exception) or value is None:  # changed type or vanished meanwhile
                found[key] = Snapshot(key, "?")
                continue
            parts = _flat(rtype, value)
            found[key] = Snapshot(key, rtype, parts, _ttl(pttl), server_digest(rtype, parts))
        return [found.get(k) or Snapshot(k, "?" if t in _READS else t) for k, t in zip(keys, types, strict=True)]


def _flat(rtype: str, reply: Any) -> tuple[bytes, ...]:
    """A pipelined reply as the scripts see it: RESP3 maps and score pairs flattened, scores as
    text (a float from RESP3 is printed as its shortest repr, "inf"/"-inf", no trailing ".0")."""
    if rtype == "string":
        return (reply,)
    if isinstance(reply, dict):
        return tuple(p for item in reply.items() for p in item)
    items = list(reply)
    if items and isinstance(items[0], (list, tuple)):
        return tuple(p for m, s in items for p in (m, _score_text(s)))
    return tuple(items)


def _score_text(score: object) -> bytes:
    if isinstance(score, bytes):
        return score
    text = repr(float(score))  # type: ignore[arg-type]
    return (text[:-2] if text.endswith(".0") else text).encode()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ttl(pttl: object) -> int | None:
    return int(pttl) if isinstance(pttl, int) and pttl >= 0 else None


def _from_script(key: str, item: Sequence[Any]) -> Snapshot:
    rtype = _text(item[0])
    if len(item) < 4:
        return Snapshot(key, rtype)
    return Snapshot(key, rtype, tuple(item[1]), _ttl(item[2]), _text(item[3]))


# --- the line format ---------------------------------------------------------------------

def _enc(b: bytes) -> object:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": b64encode(b).decode("ascii")}


def _dec(x: object) -> bytes:
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, dict) and x.get("encoding") == "base64":
        return b64decode(x["data"], validate=True)
    raise ValueError(f"not an archived byte string: {x!r}")


def encode_line(snap: Snapshot, entity: str, *, run_id: int, now_ms: int) -> bytes:
    """One archive line for a key read by SnapshotReader."""
    p = snap.parts
    if snap.rtype == "string":
        value: object = _enc(p[0])
    elif snap.rtype in ("hash", "zset"):
        second = _enc if snap.rtype == "hash" else (lambda s: s.decode("ascii"))
        value = [[_enc(a), second(b)] for a, b in zip(p[0::2], p[1::2], strict=True)]
    else:
        value = [_enc(x) for x in p]
    return orjson.dumps({
        "key": _enc(encode_key(snap.key)), "entity": entity, "type": snap.rtype, "value": value,
        "ttl_ms": snap.pttl, "expires_at_ms": None if snap.pttl is None else now_ms + snap.pttl,
        "archived_at": datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(), "run_id": run_id,
    }) + b"\n"


@dataclass(frozen=True, slots=True)
class ArchivedKey:
    key: str
    entity: str
    rtype: str
    parts: tuple[bytes, ...]
    expires_at_ms: int | None


def decode_line(line: bytes) -> ArchivedKey:
    d = orjson.loads(line)
    rtype, value = d["type"], d["value"]
    if rtype == "string":
        parts: tuple[bytes, ...] = (_dec(value),)
    elif rtype in ("hash", "zset"):
        parts = tuple(p for a, b in value for p in (_dec(a), _dec(b)))
    else:
        parts = tuple(_dec(x) for x in value)
    return ArchivedKey(decode_key(_dec(d["key"])), d["entity"], rtype, parts, d.get("expires_at_ms"))


# --- writing -----------------------------------------------------------------------------

@dataclass
class _Part:
    entity: str
    name: str
    fd: int
    sha: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    lines: int = 0
    deleted: int = 0

    def entry(self, run_id: int, part: int) -> dict[str, Any]:
        return {"name": self.name, "entity": self.entity, "run_id": run_id, "part": part,
                "lines": self.lines, "deleted": self.deleted, "bytes": self.size, "sha256": self.sha.hexdigest()}


class ArchiveWriter:
    """Appends one cleanup run's lines to its own part files and keeps the manifest current."""

    def __init__(self, folder: Path, *, run_id: int, kv_url: str | None) -> None:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {folder} as the archive folder: {exc.strerror}",
                              hint="pass --archive DIR with a folder you can write") from None
        self.folder, self.run_id = folder, run_id
        old = read_manifest(folder) if (folder / MANIFEST).exists() else None
        if old is not None and old.get("kv_url") != kv_url:
            raise ConfigError(f"{folder} holds the archive of another KV store ({old.get('kv_url')})",
                              hint="give each KV store its own --archive folder")
        self.files: list[dict[str, Any]] = list(old["files"]) if old else []
        self.runs: list[dict[str, Any]] = list(old["runs"]) if old else []
        taken = [int(f["part"]) for f in self.files] + [_part_number(p.name) for p in folder.glob("*.jsonl.gz")]
        self.part = max(taken, default=0) + 1
        self.run: dict[str, Any] = {"run_id": run_id, "part": self.part, "started_at": _now_iso(),
                                    "finished_at": None, "complete": False}
        self.runs.append(self.run)
        self.kv_url = kv_url
        self.parts: dict[str, _Part] = {}

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def write_batch(self, lines: Mapping[str, Sequence[bytes]]) -> None:
        """Append each entity's lines as one gzip member, fsync files and folder, then the
        manifest. Call before deleting any of these keys."""
        for entity, chunk in lines.items():
            if chunk:
                self._append(entity, chunk)
        _fsync_dir(self.folder)
        self._write_manifest()

    def count_deleted(self, entity: str, n: int) -> None:
        if entity in self.parts:
            self.parts[entity].deleted += n

    def close(self, *, complete: bool) -> Path:
        """Close the files and write the final manifest (last). Returns its path."""
        for part in self.parts.values():
            os.close(part.fd)
        self.run.update(finished_at=_now_iso(), complete=complete)
        self._write_manifest()
        self.parts = {}
        return self.manifest_path

    def _append(self, entity: str, chunk: Sequence[bytes]) -> None:
        part = self.parts.get(entity)
        if part is None:
            name = f"{entity}.jsonl.gz" if self.part == 1 else f"{entity}.part{self.part}.jsonl.gz"
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            part = self.parts[entity] = _Part(entity, name, fd)
        data = gzip.compress(b"".join(chunk), mtime=0)
        _write_all(part.fd, data)
        os.fsync(part.fd)
        part.sha.update(data)
        part.size += len(data)
        part.lines += len(chunk)

    def _write_manifest(self) -> None:
        files = self.files + [p.entry(self.run_id, self.part) for p in self.parts.values()]
        counts: dict[str, dict[str, int]] = {}
        for f in files:
            c = counts.setdefault(f["entity"], {"archived": 0, "deleted": 0, "files": 0})
            c["archived"] += f["lines"]
            c["deleted"] += f.get("deleted", 0)
            c["files"] += 1
        self.run["counts"] = {p.entity: {"archived": p.lines, "deleted": p.deleted} for p in self.parts.values()}
        manifest = {"format": FORMAT, "kvmigrate_version": __version__, "kv_url": self.kv_url,
                    "written_at": _now_iso(), "run_id": self.run_id, "counts": counts,
                    "files": files, "runs": self.runs}
        write_private_json(self.manifest_path, manifest)


def _part_number(name: str) -> int:
    m = _PART_RE.match(name)
    return int(m.group("part") or 1) if m else 0


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_json(path: Path, obj: object) -> None:
    """Replace `path` atomically with JSON (mode 0600): fsynced temp file, rename, fsync folder."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --- reading -----------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and sanity-check `manifest.json`; ArchiveCorrupt when absent or not ours."""
    path = folder / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveCorrupt(f"{path} does not exist",
                             hint="pass the folder given to `kvmigrate cleanup --archive`") from None
    except orjson.JSONDecodeError as exc:
        raise ArchiveCorrupt(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveCorrupt(f"{path} is not a {FORMAT} manifest")
    for f in manifest.get("files", []):
        if not _PART_RE.match(str(f.get("name", ""))):
            raise ArchiveCorrupt(f"{path} lists an unexpected file name {f.get('name')!r}")
    return manifest


def verified_blobs(folder: Path, manifest: Mapping[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    """Every listed file's bytes, checked against the manifest (length and sha256), in part
    order. Bytes past the listed length (a batch archived but never recorded, so never
    deleted) are ignored. Raises ArchiveCorrupt on the first mismatch."""
    out = []
    for f in sorted(manifest["files"], key=lambda f: (int(f["part"]), str(f["entity"]))):
        path = folder / f["name"]
        try:
            data = path.read_bytes()[: int(f["bytes"])]
        except FileNotFoundError:
            raise ArchiveCorrupt(f"{path} is listed in the manifest but missing") from None
        if len(data) != int(f["bytes"]) or hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise ArchiveCorrupt(f"{path} does not match its sha256 in the manifest",
                                 hint="the archive was changed or damaged; restore from a copy")
        out.append((f, data))
    return out


def latest_lines(blobs: Sequence[tuple[dict[str, Any], bytes]], entities: Sequence[str]) -> list[ArchivedKey]:
    """The last archived line of each key of the chosen entities, in archive order."""
    latest: dict[str, ArchivedKey] = {}
    for f, data in blobs:
        if entities and f["entity"] not in entities:
            continue
        try:
            lines = [decode_line(line) for line in gzip.decompress(data).splitlines() if line.strip()]
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise ArchiveCorrupt(f"{f['name']} matches its sha256 but cannot be read: {exc}") from None
        for item in lines:
            latest.pop(item.key, None)
            latest[item.key] = item
    return list(latest.values())


# --- restore -----------------------------------------------------------------------------

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
        reader = SnapshotReader(kv, use_eval=config.use_eval)
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
