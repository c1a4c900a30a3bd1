"""Thread-memory files (KV-LAYOUT "Thread memories"): JSON lines on disk, not in KV."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kvmigrate.tryout.seed.data import BASE_MS, DAY, MIN_USERS, WORDS, iso, make_handles, sentence


@dataclass(frozen=True)
class ExpectedMemories:
    """`ids` of the good memory lines; `bad_lines`: (file name, 1-based line number)."""

    ids: frozenset[str]
    bad_lines: tuple[tuple[str, int], ...]
    files: tuple[str, ...]


def write_memory_files(folder: Path, *, users: int = 46, seed: int = 7) -> ExpectedMemories:
    """Write `thread_{handle}.jsonl` files (KV-LAYOUT "Thread memories") owned by the first
    seeded handle, one bad line among them. Writes files; deterministic for (users, seed)."""
    rng = random.Random(seed * 1_000_003 + 1)
    handles = make_handles(max(users, MIN_USERS))
    owner = handles[0]
    ids: set[str] = set()
    bad: list[tuple[str, int]] = []
    files: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    for k, about in enumerate(handles[1:1 + max(3, users // 6)]):
        lines = []
        for _ in range(rng.randint(3, 6)):
            ms = BASE_MS - rng.randrange(90 * DAY)
            mem: dict[str, Any] = {"id": f"mem_{rng.getrandbits(48):012x}", "timestamp": iso(ms),
                   "observation": sentence(rng), "from": owner, "about": about}
            if rng.random() < 0.3:
                mem["tags"] = rng.sample(WORDS, 2)
            ids.add(mem["id"])
            lines.append(orjson.dumps(mem))
        name = f"thread_{about}.jsonl"
        if k == 1:
            lines.insert(1, b'{"id": "mem_broken", "timestamp": "2025-05-0')
            bad.append((name, 2))
        (folder / name).write_bytes(b"\n".join(lines) + b"\n")
        files.append(name)
    return ExpectedMemories(frozenset(ids), tuple(bad), tuple(files))
