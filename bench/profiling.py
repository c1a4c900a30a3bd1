"""Profile one backfill (and its no-change rerun) with pyinstrument on embedded servers.

    python bench/profiling.py [KEYS]        # default 100,000 keys

Writes bench/results/profile-<op>-<keys>.{txt,html} and prints the top of each profile. The
sampled thread is the caller's (SCAN, batch reads, transformers); Postgres work runs on the
writer thread, so its cost shows up here as waits for the page in flight.
"""

from __future__ import annotations

import sys
import time

import redis
from harness import RESULTS_DIR, new_database, seed_shape, servers
from pyinstrument import Profiler

from kvmigrate import api as commands
from kvmigrate.model.config import build_config
from kvmigrate.tryout.seed import seed_keyspace


def main(argv: list[str]) -> int:
    keys = int(float(argv[1])) if len(argv) > 1 else 100_000
    users, scale = seed_shape(keys)
    RESULTS_DIR.mkdir(exist_ok=True)
    with servers() as s:
        seeded = seed_keyspace(redis.Redis.from_url(s.kv_url), users=users, scale=scale)
        config = build_config(pg_url=new_database(s.pg_url, "profile"), kv_url=s.kv_url, env={})
        commands.setup(config)
        for op in ("backfill", "rerun"):
            profiler = Profiler(interval=0.002)
            started = time.perf_counter()
            with profiler:
                commands.backfill(config)
            seconds = time.perf_counter() - started
            stem = RESULTS_DIR / f"profile-{op}-{keys}"
            text = profiler.output_text(unicode=True, color=False, show_all=False)
            stem.with_suffix(".txt").write_text(text)
            stem.with_suffix(".html").write_text(profiler.output_html())
            print(f"== {op}: {seeded.keys_written:,} keys in {seconds:.1f} s "
                  f"({seeded.keys_written / seconds:,.0f} keys/s); full profile: {stem}.html")
            print("\n".join(text.splitlines()[:60]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
