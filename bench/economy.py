"""KV request economy: the KV commands each phase sends on a store the size of the real /vibe
one (seed users=46: about 3,300 keys), beside what a naive per-key script would send.

    python bench/economy.py [--users 46] [--no-eval]

Phases: inventory, backfill, verify (full), then archive and delete from `kvmigrate cleanup`
(after dual-write and cutover, which are not counted here). The naive figure per phase:
inventory = SCAN pages + one TYPE per key; backfill and verify = SCAN pages + one typed read
per entity key (a TYPE first where the family allows several types), as the app's own one-off
backfill did; archive = DUMP + PTTL per archived key; delete = one DEL per deleted key.
Target: at most 300 commands for the whole migration (inventory + backfill + verify + archive +
delete). Prints figures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from harness import new_database, servers

from kvmigrate import commands
from kvmigrate.config import build_config
from kvmigrate.entities import ENTITIES
from kvmigrate.kv.classify import Classifier
from kvmigrate.seed import seed_keyspace

TARGET = 300  # KV commands for the whole migration
HOBBY_DAILY_QUOTA = 3000


def naive_reads(client: redis.Redis) -> tuple[int, int, int]:
    """(keys, SCAN pages, per-key reads) of the naive script over this keyspace."""
    classifier = Classifier(ENTITIES)
    keys = pages = reads = 0
    cursor = 0
    while True:
        cursor_raw, page = client.execute_command("SCAN", cursor, "COUNT", 1000)
        pages += 1
        keys += len(page)
        for raw in page:
            c = classifier.classify(raw.decode("utf-8", "surrogateescape"))
            if c.status == "entity" and c.family is not None:
                reads += 1 if len(c.family.types) == 1 else 2
        cursor = int(cursor_raw)
        if cursor == 0:
            return keys, pages, reads


def measure(users: int, use_eval: bool) -> dict[str, Any]:
    """Run every phase once on a freshly seeded store; KV commands per phase."""
    with servers() as s:
        client = redis.Redis.from_url(s.kv_url)
        seed_keyspace(client, users=users)
        keys, pages, reads = naive_reads(client)
        config = build_config(pg_url=new_database(s.pg_url, "economy"), kv_url=s.kv_url, env={},
                              use_eval=use_eval)
        commands.setup(config)
        out: dict[str, Any] = {"keys": keys, "users": users, "eval": use_eval, "phases": {}}
        phases = out["phases"]
        phases["inventory"] = (commands.inventory(config).budget.spent, pages + keys)
        phases["backfill"] = (commands.backfill(config).budget.spent, pages + reads)
        verified = commands.verify(config, recheck_delay=0)
        phases["verify"] = (verified.budget.spent, pages + reads)
        out["verify_clean"] = verified.clean
        if not hasattr(commands, "cleanup"):
            phases["archive"] = phases["delete"] = None
            return out
        dual = commands.dual_write(config, settle=0, recheck_delay=0)
        # Forced only if the verify found differences: the figures are about KV commands, and
        # the table says so.
        out["cutover_forced"] = not (dual.verify is None or dual.verify.clean)
        commands.cutover(config, force=out["cutover_forced"])
        with tempfile.TemporaryDirectory() as tmp:
            result = commands.cleanup(config, archive_dir=Path(tmp) / "archive", yes=True, settle=0,
                                      verify_first=False, recheck_delay=0).cleanup
        by_phase = result.budget.by_phase
        archived = sum(e.archived for e in result.entities.values())
        deleted = sum(e.deleted for e in result.entities.values())
        phases["archive"] = (by_phase.get("archive", 0), pages + 2 * archived)
        phases["delete"] = (by_phase.get("delete", 0), deleted)
        out["archived"], out["deleted"] = archived, deleted
        client.close()
    return out


def table(res: dict[str, Any]) -> str:
    mode = "scripted reads (EVAL_RO)" if res["eval"] else "pipelined reads (no scripting)"
    lines = [f"KV request economy: {res['keys']:,} keys (seed users={res['users']}), {mode}", "",
             f"{'phase':<12}{'kvmigrate':>10}{'naive':>10}"]
    total = [0, 0]
    for phase, figures in res["phases"].items():
        if figures is None:
            lines.append(f"{phase:<12}{'not built':>10}{'':>10}")
            continue
        ours, naive = figures
        total = [total[0] + ours, total[1] + naive]
        lines.append(f"{phase:<12}{ours:>10,}{naive:>10,}")
    lines.append(f"{'whole':<12}{total[0]:>10,}{total[1]:>10,}  target ≤ {TARGET}: "
                 f"{'met' if total[0] <= TARGET else 'NOT met'}; {total[0] / HOBBY_DAILY_QUOTA:.1%} of one day's "
                 f"Hobby quota ({HOBBY_DAILY_QUOTA:,})")
    if not res.get("verify_clean", True) or res.get("cutover_forced"):
        lines.append("(verify found differences: cutover was forced to measure the cleanup phases)")
    if "archived" in res:
        lines.append(f"(archived {res['archived']:,} keys, deleted {res['deleted']:,})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=46)
    parser.add_argument("--no-eval", action="store_true", help="read with pipelines, as where scripting is refused")
    args = parser.parse_args(argv[1:])
    print(table(measure(args.users, not args.no_eval)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
