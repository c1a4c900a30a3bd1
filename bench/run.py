"""`make bench`: seed a /vibe-shaped keyspace on embedded servers, measure, print one table.

    BENCH_KEYS=200000 (default) | 1000000 | 100000,200000,500000,1000000

For each size: the three limits (SCAN+MGET read, COPY-to-stage+upsert, naive GET+INSERT loop),
the fresh backfill, the no-change rerun, a full verify, and the KV commands per 1,000 keys of
each Redis type (scripted and pipelined reads), each measured command in its own process for
its peak RSS. Raw results go to bench/results/bench-<keys>.json; with results for two sizes or
more, bench/plot.py draws docs/benchmarks.png. Prints figures only: nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import redis
from handloader import seed_strings
from harness import RESULTS_DIR, kv_db_url, machine, new_database, run_worker, seed_shape, servers

from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.entities import ENTITIES
from kvmigrate.tryout.seed import seed_keyspace

#: Keys copied per Redis type for the per-type command counts (one backfill each, both read modes).
TYPE_SAMPLE = 50_000
SAMPLE_SEED = 17
TARGETS = {  # the performance targets
    "hand_ratio": 1.0,  # backfill ≥ 1.0 × the hand-written loader, on the msg:* store
    "naive_ratio": 20.0,  # backfill ≥ 20 × the naive loop
    "rerun_ratio": 2.0,  # no-change rerun ≥ 2 × the fresh backfill
    "verify_ratio": 1.0,  # full verify ≥ the backfill rate
    "string_cmds": 2.1,  # KV commands per 1,000 string keys
    "rss_mb": 150.0,  # peak RSS of backfill
}


def sizes() -> list[int]:
    raw = os.environ.get("BENCH_KEYS", "200000")
    return [int(float(x)) for x in raw.replace("_", "").split(",") if x.strip()]


def by_type_sample(client: redis.Redis, kv_url: str, cap: int = TYPE_SAMPLE) -> dict[str, str]:
    """Copy up to `cap` entity keys of each Redis type into their own logical db (2, 3, …).

    The keys of a type with more are drawn at random with a fixed seed, so every run of a size
    copies the same keys. Registry hashes read field by field (HSCAN) are left out: they are one
    key of many records.
    Returns {type: kv url of its db}. Uses COPY … DB n (Redis ≥ 6.2, Valkey).
    """
    classifier = Classifier(ENTITIES)
    keys: list[bytes] = []
    for raw in client.scan_iter(count=1000):
        c = classifier.classify(raw.decode("utf-8", "surrogateescape"))
        if c.status == "entity" and c.family is not None and not c.family.split_fields:
            keys.append(raw)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for key, rtype in zip(keys, pipe.execute(), strict=True):
        grouped[rtype.decode()].append(key)
    out: dict[str, str] = {}
    for db, rtype in enumerate(sorted(grouped), start=2):
        url = kv_db_url(kv_url, db)
        redis.Redis.from_url(url).flushdb()
        pipe = client.pipeline(transaction=False)
        # the same keys whatever order this server's SCAN gave them in (its hash seed varies)
        chosen = sorted(grouped[rtype])
        for key in random.Random(SAMPLE_SEED).sample(chosen, min(cap, len(chosen))):
            pipe.execute_command("COPY", key, key, "DB", db)
        pipe.execute()
        out[rtype] = url
    return out


def per_type_commands(pg_admin: str, urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Backfill each type's db; billed KV commands per 1,000 keys."""
    out: dict[str, dict[str, Any]] = {}
    for rtype, url in urls.items():
        client = redis.Redis.from_url(url)
        n = int(client.dbsize())
        client.close()
        row: dict[str, Any] = {"keys": n}
        r = run_worker("backfill", pg_url=new_database(pg_admin, f"{rtype}_billed"), kv_url=url, keys=n)
        row["billed"] = round(r["kv_total"] * 1000 / n, 2)
        row["billed_kv"] = r["kv"]
        row["billed_keys_per_s"] = round(r["keys_per_s"])
        out[rtype] = row
    return out


def strings_store(pg_admin: str, kv_url: str, target: int, log: Any) -> dict[str, Any]:
    """The headline comparison: a store of `msg:*` strings (and a registry of 2,000 users) in
    logical db 1, loaded by the hand-written loader and by a kvmigrate backfill."""
    url = kv_db_url(kv_url, 1)
    keys = seed_strings(kv_url=url, keys=target)
    out = {"keys": keys,
           "hand": run_worker("hand_loader", pg_url=new_database(pg_admin, "hand"), kv_url=url, keys=keys),
           "backfill": run_worker("backfill", pg_url=new_database(pg_admin, "strings"), kv_url=url, keys=keys)}
    redis.Redis.from_url(url).flushdb()
    log(f"msg:* store ({keys:,} keys): hand-written loader {out['hand']['keys_per_s']:,.0f} keys/s,"
        f" backfill {out['backfill']['keys_per_s']:,.0f} keys/s")
    return out


def run_size(target: int, log: Any) -> dict[str, Any]:
    users, scale = seed_shape(target)
    with servers() as s:
        client = redis.Redis.from_url(s.kv_url)
        started = time.perf_counter()
        seeded = seed_keyspace(client, users=users, scale=scale)
        keys = seeded.keys_written
        log(f"seeded {keys:,} keys ({users} users × scale {scale}) in {time.perf_counter() - started:.0f} s")
        res: dict[str, Any] = {"keys": keys, "users": users, "scale": scale,
                               "machine": machine(s.pg_url, s.kv_url)}
        res["read_limit"] = run_worker("read_limit", kv_url=s.kv_url, keys=keys)
        log(f"read limit {res['read_limit']['keys_per_s']:,.0f} keys/s")
        db = new_database(s.pg_url, "backfill")
        res["backfill"] = run_worker("backfill", pg_url=db, kv_url=s.kv_url, keys=keys)
        log(f"backfill {res['backfill']['keys_per_s']:,.0f} keys/s")
        res["rerun"] = run_worker("backfill", pg_url=db, kv_url=s.kv_url, keys=keys, setup=False)
        log(f"rerun {res['rerun']['keys_per_s']:,.0f} keys/s ({res['rerun']['rows_written']} rows written)")
        res["verify"] = run_worker("verify", pg_url=db, kv_url=s.kv_url, keys=keys)
        log(f"verify {res['verify']['keys_per_s']:,.0f} keys/s (clean: {res['verify']['clean']})")
        pages = res["backfill"]["kv"].get("SCAN", 1)
        res["upsert_limit"] = run_worker("upsert_limit", src_pg_url=db, pg_url=new_database(s.pg_url, "limit"),
                                         keys=keys, pages=pages)
        log(f"stage+upsert limit {res['upsert_limit']['keys_per_s']:,.0f} keys/s")
        res["naive"] = run_worker("naive", pg_url=new_database(s.pg_url, "naive"), kv_url=s.kv_url, keys=keys)
        log(f"naive loop {res['naive']['keys_per_s']:,.0f} keys/s")
        res["strings"] = strings_store(s.pg_url, s.kv_url, target, log)
        res["by_type"] = per_type_commands(s.pg_url, by_type_sample(client, s.kv_url))
        client.close()
    res["commit"] = _git_commit()
    res["when"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return res


def _git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "?"


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(res: dict[str, Any]) -> str:
    """The one table `make bench` prints."""
    bf, rr, vf = res["backfill"], res["rerun"], res["verify"]
    read, up, naive = (res[k]["keys_per_s"] for k in ("read_limit", "upsert_limit", "naive"))
    lines = [f"kvmigrate bench: {res['keys']:,} keys (/vibe-shaped, {res['users']} users × scale {res['scale']})",
             "machine: " + "; ".join(f"{k} {v}" for k, v in res["machine"].items()), ""]
    head = f"{'figure':<34}{'value':>14}  {'÷ read':>7} {'÷ upsert':>8} {'× naive':>8}  target"
    lines += [head, "-" * (len(head) + 24)]

    def rate(name: str, value: float, target: str) -> None:
        lines.append(f"{name:<34}{_fmt(value) + ' k/s':>14}  {value / read:>7.2f} {value / up:>8.2f}"
                     f" {value / naive:>8.1f}  {target}")

    t = TARGETS
    rate("backfill (fresh)", bf["keys_per_s"],
         f"≥ {t['naive_ratio']:.0f} × naive: {_verdict(bf['keys_per_s'] / naive >= t['naive_ratio'])}")
    rate("no-change rerun", rr["keys_per_s"],
         f"≥ {t['rerun_ratio']} × backfill ({rr['keys_per_s'] / bf['keys_per_s']:.2f}): "
         f"{_verdict(rr['keys_per_s'] / bf['keys_per_s'] >= t['rerun_ratio'])}; {rr['rows_written']} rows written")
    rate("full verify", vf["keys_per_s"],
         f"≥ backfill ({vf['keys_per_s'] / bf['keys_per_s']:.2f}): "
         f"{_verdict(vf['keys_per_s'] / bf['keys_per_s'] >= t['verify_ratio'])}; clean={vf['clean']}")
    rate("limit: SCAN+MGET read", read, "")
    rate("limit: COPY-to-stage+upsert", up, f"{res['upsert_limit']['rows']:,} rows")
    rate("limit: naive GET+INSERT loop", naive,
         f"sampled {res['naive']['sampled']:,} of {res['naive']['entity_keys']:,} entity keys")
    st = res.get("strings")
    if st:
        hand, sbf = st["hand"]["keys_per_s"], st["backfill"]["keys_per_s"]
        lines += ["", f"msg:* store ({st['keys']:,} keys: msg:* strings + a 2,000-user registry)"]
        lines.append(f"{'  hand-written loader':<34}{_fmt(hand) + ' k/s':>14}")
        lines.append(f"{'  kvmigrate backfill':<34}{_fmt(sbf) + ' k/s':>14}  {sbf / hand:>7.2f} × hand-written"
                     f"  ≥ {t['hand_ratio']} × hand-written: {_verdict(sbf / hand >= t['hand_ratio'])};"
                     f" peak RSS {st['backfill']['peak_rss_mb']:.0f} MB")
    lines.append("")
    lines.append(f"{'billed KV commands per 1,000 keys':<34}{'kvmigrate':>14}  {'naive':>8}  target")
    naive_cmds = res["naive"]["kv_total"] * 1000 / res["keys"]
    lines.append(f"{'  all keys (mixed store)':<34}{bf['kv_total'] * 1000 / res['keys']:>14.2f}  {naive_cmds:>8.0f}")
    for rtype, row in sorted(res["by_type"].items()):
        target = f"≤ {t['string_cmds']}: {_verdict(row['billed'] <= t['string_cmds'])}" if rtype == "string" else \
            "one read per key (the floor)"
        lines.append(f"{'  ' + rtype + ' keys (' + format(row['keys'], ',') + ')':<34}{row['billed']:>14.2f}"
                     f"  {'':>8}  {target}")
    lines.append("")
    rss = [bf["peak_rss_mb"], rr["peak_rss_mb"], vf["peak_rss_mb"]]
    lines.append(f"{'peak RSS (MB)':<34}{f'backfill {rss[0]:.0f}':>14}  rerun {rss[1]:.0f}  verify {rss[2]:.0f}"
                 f"  ≤ {t['rss_mb']:.0f}: {_verdict(max(rss) <= t['rss_mb'])}")
    return "\n".join(lines)


def main() -> int:
    RESULTS_DIR.mkdir(exist_ok=True)

    def log(msg: str) -> None:
        print(f"  · {msg}", file=sys.stderr, flush=True)

    for target in sizes():
        started = time.perf_counter()
        res = run_size(target, log)
        res["bench_seconds"] = round(time.perf_counter() - started)
        path = RESULTS_DIR / f"bench-{target}.json"
        path.write_text(json.dumps(res, indent=2))
        print(table(res))
        print(f"(raw results: {path.relative_to(RESULTS_DIR.parent.parent)}; took {res['bench_seconds']} s)\n")
    if len(list(RESULTS_DIR.glob("bench-*.json"))) >= 2:
        from plot import plot

        print(f"plot: {plot()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
