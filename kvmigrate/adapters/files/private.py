"""The one owner-only file writer: every file kvmigrate writes holds values from the store (the
archive, its manifest, a rehearse report, a rejects export), so each is created with mode 0600,
and an existing file it replaces or truncates is set to 0600 too."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

PRIVATE = 0o600


def open_private(path: Path, *, new: bool = False, append: bool = False) -> int:
    """Open `path` for writing, readable by its owner only; returns the file descriptor. `new`
    refuses a file that exists (O_EXCL); otherwise an existing file is truncated (unless
    `append`) and its mode set to 0600 (O_CREAT keeps an existing file's mode)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if new else 0) | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE)
    if not new:
        os.fchmod(fd, PRIVATE)
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a new or renamed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `path` whole, readable by its owner only (creating its folder). Not atomic: for a
    report or an export, not for a file a later run relies on (see write_private_json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_private(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_private_json(path: Path, obj: object) -> None:
    """Replace `path` atomically with JSON (mode 0600): fsynced temp file, rename, fsync folder."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = open_private(tmp, new=True)
    try:
        write_all(fd, orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
