"""Shared pieces of the benchmarks: servers, sized keyspaces, worker processes, machine facts.

Every measured command runs in its own worker process (`python bench/worker.py OP JSON`), so its
peak RSS is its own and nothing a previous step allocated is counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from kvmigrate.tryout.embedded import EmbeddedServers, embedded_servers

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_DIR = BENCH_DIR.parent / "docs"
#: At scale 3 the seed writes about this many keys per user (measured: 2,000 users -> 223,430).
KEYS_PER_USER = 111.7
SCALE = 3


def seed_shape(keys: int) -> tuple[int, int]:
    """(users, scale) that make a /vibe-shaped keyspace of about `keys` keys."""
    return max(8, round(keys / KEYS_PER_USER)), SCALE


@contextlib.contextmanager
def servers() -> Iterator[EmbeddedServers]:
    """Embedded Postgres + Valkey for the duration of the block (deleted afterwards)."""
    with embedded_servers() as s:
        yield s


def new_database(admin_url: str, label: str) -> str:
    """Create an empty database on the benchmark server; return its URL."""
    name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def kv_db_url(kv_url: str, db: int) -> str:
    """The KV URL pointing at logical database `db`."""
    parts = urlsplit(kv_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def run_worker(op: str, **args: Any) -> dict[str, Any]:
    """Run one measured operation in a fresh process; its JSON result plus `peak_rss_mb`."""
    cmd = [sys.executable, str(BENCH_DIR / "worker.py"), op, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {op} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB.

    Read from VmHWM in /proc/self/status: getrusage's ru_maxrss survives exec, so a worker
    would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Timer:
    seconds: float = 0.0

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def machine(pg_url: str, kv_url: str) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, Python and server versions."""
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('fsync', 'synchronous_commit', 'shared_buffers', 'work_mem')").fetchall())
    client = redis.Redis.from_url(kv_url)
    info = client.info("server")
    client.close()
    kv = (f"Valkey {info['valkey_version']}" if "valkey_version" in info
          else f"Redis {info.get('redis_version')}")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": f"PostgreSQL {row[0] if row else '?'} (embedded; " + ", ".join(
            f"{k}={v}" for k, v in sorted(settings.items())) + ")",
        "kv": f"{kv} (embedded)",
    }
