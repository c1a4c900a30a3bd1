"""The cleanup archive: lossless JSONL.gz files and their manifest (keys are read for it by
`kvmigrate.adapters.kv.snapshot`; `kvmigrate.phases.restore` puts them back).

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
* One run at a time: cleanup and restore hold an OS lock (`flock`) on the archive folder for
  their whole run; a second run into the same folder is refused (ArchiveBusy, exit 1). A new
  part file is listed in the manifest (0 bytes) before its first line is written, so every part
  file in the folder is one the manifest knows.
* Restore verifies every listed file against the manifest first and refuses on any mismatch,
  a line count or a per-entity or per-run count that does not add up included.
  When a key was archived more than once (a rerun), its last line wins. A key with a TTL gets
  the time it had left (`expires_at_ms` − now); one already expired is skipped and counted.
  A key that exists with an equal value is skipped; with a different value it is refused
  unless `force` (then replaced). Restore writes KV only and changes no phase flag.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import re
from base64 import b64decode, b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from kvmigrate import __version__
from kvmigrate.adapters.files.private import fsync_dir, open_private, write_all, write_private_json
from kvmigrate.adapters.kv.scanner import decode_key, encode_key
from kvmigrate.adapters.kv.snapshot import Snapshot
from kvmigrate.model.errors import ArchiveBusy, ConfigError, KvmigrateError, StorageError
from kvmigrate.model.records import ArchivedKey

FORMAT = "kvmigrate-archive/1"
MANIFEST = "manifest.json"
_PART_RE = re.compile(r"^(?P<entity>[a-z_]+)(?:\.part(?P<part>\d+))?\.jsonl\.gz$")

class ArchiveCorrupt(KvmigrateError):
    """An archive file is missing or does not match its manifest; nothing was restored."""

    exit_code = 1


class FolderLock:
    """An exclusive OS lock (`flock`) on the archive folder itself, held by one cleanup or
    restore run; the OS releases it when the process ends, however it ends."""

    def __init__(self, folder: Path, what: str) -> None:
        try:
            self.fd: int | None = os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            raise ArchiveCorrupt(f"{folder / MANIFEST} does not exist",
                                 hint="pass the folder given to `kvmigrate cleanup --archive-dir`") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise ArchiveBusy(f"another kvmigrate cleanup or restore is using the archive folder {folder}",
                              hint=f"wait for it to finish, then run this {what} again; two runs into one "
                              "folder would overwrite each other's manifest") from None

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


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
    """Appends one cleanup run's lines to its own part files and keeps the manifest current.
    Holds the folder's lock from construction to `close()` (ArchiveBusy when another run has it)."""

    def __init__(self, folder: Path, *, run_id: int, kv_url: str | None) -> None:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, folder) from None
        self.lock = FolderLock(folder, "cleanup")
        try:
            self._open(folder, run_id, kv_url)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, folder: Path, run_id: int, kv_url: str | None) -> None:
        self.folder, self.run_id = folder, run_id
        old = read_manifest(folder) if (folder / MANIFEST).exists() else None
        if old is not None and old.get("kv_url") != kv_url:
            raise ConfigError(f"{folder} holds the archive of another KV store ({old.get('kv_url')})",
                              hint="give each KV store its own --archive-dir folder")
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
        manifest. Call before deleting any of these keys. StorageError when the folder cannot
        be written (nothing of this batch is deleted then)."""
        try:
            for entity, chunk in lines.items():
                if chunk:
                    self._append(entity, chunk)
            fsync_dir(self.folder)
            self._write_manifest()
        except OSError as exc:
            raise storage_error(exc, self.folder) from None

    def count_deleted(self, entity: str, n: int) -> None:
        if entity in self.parts:
            self.parts[entity].deleted += n

    def close(self, *, complete: bool) -> Path:
        """Close the files, write the final manifest (last) and release the folder. Returns its
        path. StorageError when the manifest cannot be written."""
        try:
            for part in self.parts.values():
                os.close(part.fd)
            self.run.update(finished_at=_now_iso(), complete=complete)
            self._write_manifest()
        except OSError as exc:
            raise storage_error(exc, self.folder) from None
        finally:
            self.parts = {}
            self.lock.release()
        return self.manifest_path

    def _append(self, entity: str, chunk: Sequence[bytes]) -> None:
        part = self.parts.get(entity)
        if part is None:
            name = f"{entity}.jsonl.gz" if self.part == 1 else f"{entity}.part{self.part}.jsonl.gz"
            fd = open_private(self.folder / name, new=True, append=True)
            part = self.parts[entity] = _Part(entity, name, fd)
            self._write_manifest()  # listed (0 bytes) before its first line: no part file is unknown
        data = gzip.compress(b"".join(chunk), mtime=0)
        write_all(part.fd, data)
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


def storage_error(exc: OSError, folder: Path) -> StorageError:
    """The error for an archive folder that cannot be written: the path and the OS's reason."""
    path = exc.filename or folder
    return StorageError(f"cannot write the archive at {path}: {exc.strerror or exc}",
                        hint=f"free space on that disk (or make {folder} writable), then run the same command "
                        "again: it resumes, and no key was deleted before its archive line was written")


def _part_number(name: str) -> int:
    m = _PART_RE.match(name)
    return int(m.group("part") or 1) if m else 0


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# --- reading -----------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and sanity-check `manifest.json`; ArchiveCorrupt when absent or not ours."""
    path = folder / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveCorrupt(f"{path} does not exist",
                             hint="pass the folder given to `kvmigrate cleanup --archive-dir`") from None
    except orjson.JSONDecodeError as exc:
        raise ArchiveCorrupt(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveCorrupt(f"{path} is not a {FORMAT} manifest")
    files = manifest.get("files", [])
    if not isinstance(files, list):
        raise ArchiveCorrupt(f"{path}: 'files' is not a list")
    for f in files:
        if not isinstance(f, dict) or not _PART_RE.match(str(f.get("name", ""))):
            raise ArchiveCorrupt(f"{path} lists an unexpected file {f!r:.200}")
        if not all(isinstance(f.get(k), t) for k, t in _FILE_FIELDS.items()):
            raise ArchiveCorrupt(f"{path}: the entry for {f['name']} lacks one of {', '.join(_FILE_FIELDS)}")
    return manifest


#: What every `files` entry of a manifest carries (and restore relies on).
_FILE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "entity": str, "part": int, "lines": int, "deleted": int, "bytes": int, "sha256": str}


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
    """The last archived line of each key of the chosen entities, in archive order. Raises
    ArchiveCorrupt when a file holds another number of lines than the manifest lists."""
    latest: dict[str, ArchivedKey] = {}
    for f, data in blobs:
        if entities and f["entity"] not in entities:
            continue
        try:
            lines = [decode_line(line) for line in gzip.decompress(data).splitlines() if line.strip()] if data else []
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise ArchiveCorrupt(f"{f['name']} matches its sha256 but cannot be read: {exc}") from None
        if len(lines) != int(f["lines"]):
            raise ArchiveCorrupt(f"{f['name']} holds {len(lines)} lines where the manifest lists {f['lines']}",
                                 hint="the manifest was edited or damaged; restore from a copy of the archive")
        for item in lines:
            latest.pop(item.key, None)
            latest[item.key] = item
    return list(latest.values())


def check_counts(manifest: Mapping[str, Any]) -> None:
    """The manifest's own totals must add up: per entity, `counts` is the sum of its files'
    lines and deletes, and each run's counts are its own files' (a removed entry shows here).
    Raises ArchiveCorrupt naming the first total that does not."""
    sums: dict[str, dict[str, int]] = {}
    by_run: dict[tuple[int, str], dict[str, Any]] = {}
    for f in manifest["files"]:
        c = sums.setdefault(f["entity"], {"archived": 0, "deleted": 0})
        c["archived"] += int(f["lines"])
        c["deleted"] += int(f["deleted"])
        by_run[(int(f.get("run_id", -1)), str(f["entity"]))] = f
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        for entity in sorted(set(counts) | set(sums)):
            listed = {k: int((counts.get(entity) or {}).get(k, 0)) for k in ("archived", "deleted")}
            if listed != sums.get(entity, {"archived": 0, "deleted": 0}):
                raise ArchiveCorrupt(f"the manifest counts {listed} for {entity} but its files add up to "
                                     f"{sums.get(entity)}: a file entry was removed or changed",
                                     hint="restore from a copy of the archive; this one does not list every file")
    for run in manifest.get("runs") or []:
        for entity, c in (run.get("counts") or {}).items() if isinstance(run, dict) else ():
            f = by_run.get((int(run.get("run_id", -1)), str(entity)))
            if int(c.get("archived", 0)) and (f is None or int(f["lines"]) != int(c["archived"])):
                raise ArchiveCorrupt(f"cleanup run {run.get('run_id')} archived {c['archived']} {entity} lines, but "
                                     f"the manifest lists {'no file' if f is None else str(f['lines']) + ' lines'} "
                                     "for it", hint="restore from a copy of the archive; this one does not list "
                                     "every file")


def unlisted_files(folder: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Archive part files in the folder that hold bytes but that the manifest does not list
    (left by a run whose manifest was overwritten by another's)."""
    listed = {f["name"] for f in manifest["files"]}
    return sorted(p.name for p in folder.glob("*.jsonl.gz")
                  if _PART_RE.match(p.name) and p.name not in listed and p.stat().st_size > 0)


# --- restore -----------------------------------------------------------------------------
