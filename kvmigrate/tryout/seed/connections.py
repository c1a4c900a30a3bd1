"""DM consent (A's records and B's sets), friends and moderation reports (both codebases),
written the way each codebase's handlers write them, with the overlaps and defects a shared
store collects: pairs both codebases recorded (agreeing or not), a key spelled with another case,
a one-sided friendship, a bad status and a report without a reported handle.
"""

from __future__ import annotations

from kvmigrate.tryout.seed.data import ALNUM_UP, dumps, iso, sentence
from kvmigrate.tryout.seed.writer import Seed

_REASONS = ("spam", "harassment", "impersonation", "inappropriate", "other")


def seed_connections(s: Seed) -> None:
    seed_consent(s)
    seed_friends(s)
    seed_reports(s)


def _canon(h: str) -> str:
    return h.lower().lstrip("@").replace("-", "_")


def seed_consent(s: Seed) -> None:
    """A: one JSON record per (from, to); B: the pending/accepted/blocked sets its actions leave."""
    r, hs = s.r, s.handles
    a_pairs = [(a, b) if r.random() < 0.5 else (b, a) for a, b in r.sample(s.pairs, min(len(s.pairs), len(hs)))]
    for src, dst in a_pairs:
        asked = s.ms(120, 5)
        status = r.choice(("pending", "accepted", "accepted", "blocked"))
        record: dict[str, object] = {"status": status, "requestedAt": iso(asked)}
        if status != "pending":
            record["respondedAt"] = iso(asked + r.randrange(60_000, 3 * 86_400_000))
        elif r.random() < 0.5:
            record["message"] = sentence(r, 3, 8)
        if status == "accepted" and r.random() < 0.3:
            record["grandfathered"] = True
        s.w.string("consent:*", f"consent:{src}:{dst}", dumps(record))
        s.consent.add(f"{_canon(src)}:{_canon(dst)}")
    src, dst = a_pairs[0]  # the other codebase's spelling of one pair: one row, the other merged
    s.w.string("consent:*", f"consent:{src.capitalize()}:{dst}", dumps(
        {"status": "pending", "requestedAt": iso(s.ms(200, 150))}))
    bad_src, bad_dst = a_pairs[1][1], a_pairs[1][0]
    if f"{_canon(bad_src)}:{_canon(bad_dst)}" not in s.consent:
        s.w.string("consent:*", f"consent:{bad_src}:{bad_dst}", dumps({"status": "maybe", "requestedAt": iso(s.ms(30, 0))}))
        s.bad(f"consent:{bad_src}:{bad_dst}", "bad_status")
    _seed_consent_sets(s, a_pairs)


def _seed_consent_sets(s: Seed, a_pairs: list[tuple[str, str]]) -> None:
    """B's actions (request, accept, block), a third of them on pairs A recorded too."""
    r, hs = s.r, s.handles
    sets: dict[str, set[str]] = {}
    pairs = r.sample(a_pairs, len(a_pairs) // 3) + [tuple(p) for p in r.sample(s.pairs, len(hs) // 2)]
    for src, dst in pairs:
        src, dst = src.lower().lstrip("@"), dst.lower().lstrip("@")  # B cleans handles this far
        sets.setdefault(f"pending:{dst}", set()).add(src)
        action = r.choice(("request", "accept", "accept", "block"))
        if action in ("accept", "block"):
            sets[f"pending:{dst}"].discard(src)
        if action == "accept":
            sets.setdefault(f"accepted:{dst}", set()).add(src)
            sets.setdefault(f"accepted:{src}", set()).add(dst)
            s.consent.add(f"{_canon(dst)}:{_canon(src)}")
        elif action == "block":
            sets.setdefault(f"blocked:{dst}", set()).add(src)
        s.consent.add(f"{_canon(src)}:{_canon(dst)}")
    for name in sorted(sets):
        if sets[name]:
            state = name.split(":", 1)[0]
            s.w.sadd(f"consent:{state}:*", f"consent:{name}", sorted(sets[name]))


def seed_friends(s: Seed) -> None:
    """`friends:{h}` sets, added symmetrically; one friendship recorded by one side only."""
    r = s.r
    friends: dict[str, set[str]] = {}
    chosen = r.sample(s.pairs, min(len(s.pairs), len(s.handles)))
    for k, (a, b) in enumerate(chosen):
        a, b = _canon(a), _canon(b)
        friends.setdefault(a, set()).add(b)
        if k:  # the first pair: only one side's SADD landed
            friends.setdefault(b, set()).add(a)
        s.friends.add(":".join(sorted((a, b))))
    for h in sorted(friends):
        s.w.sadd("friends:*", f"friends:{h}", sorted(friends[h]))


def seed_reports(s: Seed) -> None:
    """A's `vibe:reports` hash with its counters, B's `report:{id}` keys with its list and counters."""
    r, hs = s.r, s.handles
    a_reports: dict[str, bytes] = {}
    a_counts: dict[str, int] = {}
    for _ in range(max(3, len(hs) // 5)):
        at = s.ms(90, 1)
        rid = s.unique(lambda: f"RPT-{at}-{''.join(r.choices(ALNUM_UP, k=4))}")  # noqa: B023 - called at once
        reporter, reported = r.sample(hs, 2)
        reviewed = r.random() < 0.4
        a_reports[rid] = dumps({
            "id": rid, "reporter": reporter, "reported": reported, "reason": r.choice(_REASONS),
            "message_id": None, "details": sentence(r, 4, 10) if r.random() < 0.6 else None,
            "created_at": iso(at), "created_at_ts": at, "status": "reviewed" if reviewed else "pending",
            "reviewed_at": iso(at + 86_400_000) if reviewed else None, "reviewed_by": "team" if reviewed else None,
            "action_taken": r.choice(("warned", "none")) if reviewed else None, "notes": None})
        a_counts[reported] = a_counts.get(reported, 0) + 1
        s.reports.add(rid)
    s.w.hash("vibe:reports", "vibe:reports", a_reports)
    s.w.hash("vibe:report_counts", "vibe:report_counts", a_counts)
    _seed_b_reports(s)


def _seed_b_reports(s: Seed) -> None:
    r, hs = s.r, s.handles
    pending: list[str] = []
    counts: dict[str, int] = {}
    for _ in range(max(2, len(hs) // 8)):
        at = s.ms(60, 1)
        rid = s.unique(lambda: f"report_{at}_{r.getrandbits(24):06x}")  # noqa: B023 - called at once
        reporter, target = r.sample(hs, 2)
        status = r.choice(("pending", "pending", "resolved"))
        s.w.string("report:*", f"report:{rid}", dumps({
            "id": rid, "reporter": reporter, "target": target, "reason": r.choice(_REASONS),
            "details": sentence(r, 3, 9), "timestamp": at, "status": status}))
        if status == "pending":
            pending.append(rid)
        counts[target] = counts.get(target, 0) + 1
        s.reports.add(rid)
    bad = s.unique(lambda: f"report_{s.ms(10, 0)}_{r.getrandbits(24):06x}")
    s.w.string("report:*", f"report:{bad}", dumps({"id": bad, "reporter": hs[0], "reason": "spam",
                                                   "timestamp": s.ms(10, 0), "status": "pending"}))
    s.bad(f"report:{bad}", "missing_field")
    s.w.rpush("reports:pending", "reports:pending", pending[::-1] + [bad])
    for h in sorted(counts):
        s.w.string("reports:count:*", f"reports:count:{h}", str(counts[h]))
