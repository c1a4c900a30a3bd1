"""The client's memory files: find the folder and read every `thread_*.jsonl` line as a RawRecord
for the memories transformer. Reads files only (no KV, no Postgres); writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kvmigrate.entities.memories import FILE, FILE_GLOB, UNREADABLE
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.records import RawRecord

DEFAULT_MEMORIES_DIR = Path("~/.vibe/memory")


def memories_folder(directory: Path | None, *, explicit: bool) -> Path | None:
    """The memories folder to read: `directory`, else the client's default when it exists.

    None when there is nothing to read; a folder that was asked for but is missing is an error.
    """
    folder = (directory or DEFAULT_MEMORIES_DIR).expanduser()
    if folder.is_dir():
        return folder
    if explicit or directory is not None:
        raise ConfigError(f"memories folder {folder} does not exist", hint="pass --memories-dir DIR")
    return None



def iter_memory_records(folder: Path) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of every `thread_*.jsonl` file in `folder`, files by
    name, lines in order. Reads files only; a file that cannot be read (or stops being readable)
    yields one `unreadable` record instead of raising. A folder that cannot be listed raises
    ConfigError."""
    try:
        paths = sorted(p for p in folder.iterdir() if p.match(FILE_GLOB))
    except OSError as exc:
        raise ConfigError(f"cannot list the memories folder {folder}: {exc.strerror or exc}",
                          hint="check its permissions, or pass --memories-dir DIR") from None
    for path in paths:
        yield from _file_records(path)


def _file_records(path: Path) -> Iterator[RawRecord]:
    key = "file:" + path.name
    try:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                value = line.rstrip(b"\n").rstrip(b"\r")
                if value.strip():
                    yield RawRecord(key, "jsonl", value, f"L{number:06d}", FILE.name)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
        yield RawRecord(key, "jsonl", error.encode("utf-8", "replace"), "", UNREADABLE.name)
