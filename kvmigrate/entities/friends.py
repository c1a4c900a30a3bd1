"""Friends: `friends:{h}` sets of handles → one `friendships` row per unordered pair.

The app adds friends symmetrically (`SADD friends:{a} b` and `SADD friends:{b} a`), so one
friendship is stored twice; a pair listed by one side only is what an interrupted or one-sided
write left.

Rules (README, "Data rules"):
* the key's handle and every member are normalised; the pair is (handle_a, handle_b) with
  handle_a < handle_b and id `handle_a:handle_b`;
* `listed_by` is the sorted list of the pair's handles whose set lists the other, and `mutual`
  is true when both do. An asymmetric pair is kept (never dropped, never completed): a row with
  `mutual` false and `listed_by` naming the one side;
* a member that is not a valid handle is an item reject `[member]` (`invalid_handle`); a set
  listing its own handle is an item reject `[member]` (`self_friend`); the other members
  migrate;
* the two sides of a pair (and keys collapsing into one handle, `friends:Bob` and
  `friends:bob`) combine by union: nothing one source says is overruled, so no source is
  merged away (a set holds many pairs and is never marked `merged` for one of them).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Merged, Outcome, RawRecord, Reject, Row, SourcedRow


def combine(sources: Sequence[SourcedRow]) -> Merged:
    """One `friendships` row from both sides of a pair: `listed_by` is their union."""
    ordered = sorted(sources, key=lambda r: r.order)
    owner = ordered[-1]
    listed = sorted({h for s in sources for h in s.values.get("listed_by") or ()})
    values = {**owner.values, "listed_by": listed, "mutual": len(listed) == 2}
    return Merged(SourcedRow(values, owner.rank, owner.source_key, owner.source_field, owner.meta))


TABLE = TableSpec(
    "friendships",
    "id",
    ("id", "handle_a", "handle_b", "mutual", "listed_by"),
    user_refs=("handle_a", "handle_b"),
    merge="fill",
    combine=combine,
)


class Friends(EntityBase):
    name = "friends"
    load_order = 90
    families: tuple[Family, ...] = (Family("friends", "friends:*", frozenset({"set"}), rank=10),)
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_friends(self, record: RawRecord) -> Outcome:
        members = c.set_members(record.value)
        raw_owner = record.key.split(":", 1)[1]
        owner = c.handle(raw_owner, what=f"handle {raw_owner!r} in the key")
        normalised = int(owner != raw_owner)
        rows: dict[str, Row] = {}
        bad: list[tuple[str, Reject]] = []
        for label, friend, data in members:
            if friend == owner:
                friend = c.Bad("self_friend", f"member {label} is the set's own handle")
            if isinstance(friend, c.Bad):
                bad.append((label, Reject(friend.code, f"{record.key} member {label}: {friend}", data)))
                continue
            normalised += friend.encode() != data
            a, b = sorted((owner, friend))
            values = {"id": f"{a}:{b}", "handle_a": a, "handle_b": b, "mutual": False, "listed_by": [owner]}
            rows[f"{a}:{b}"] = Row("friendships", values, 10)
        stats = {"handle_normalised": normalised} if normalised else {}
        return Outcome(rows=tuple(rows[k] for k in sorted(rows)), item_rejects=tuple(bad), stats=stats)


FRIENDS = Friends()
