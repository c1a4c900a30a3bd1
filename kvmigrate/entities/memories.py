"""Thread memories: lines of the client's `thread_{handle}.jsonl` files → `memories` rows.

Memories are not in KV: the client appends one JSON object per line, `{id, timestamp (ISO),
observation, from, about, …}`, to `~/.vibe/memory/thread_{handle}.jsonl`, where `{handle}` is
the thread partner (the `about` handle, sanitised for a file name). `kvmigrate.adapters.files.memories` turns
every non-blank line into a RawRecord (`key = "file:<file name>"`, `field = "L<line number, 6 digits>"` (so line 10 sorts after line 9));
the transformer is pure like every other.

Rules (README, "Data rules"): the memory `id` is required and is the primary key (a rerun
rewrites nothing); `owner` ← `from` and `about` ← `about`, both required and normalised — the
file name is not used as a fallback owner, because it names the thread partner, not the owner;
`observation` is required text; `created_at` ← `timestamp` (missing: empty); every other field
goes to `details`. A bad line is a reject and the file goes on; a file that cannot be read is
one `unreadable_file` reject (key `file:<name>`, no field) whose raw value is the error text.
"""

from __future__ import annotations

from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.entities.board import required_text
from kvmigrate.model.records import Outcome, RawRecord, Row

TABLE = TableSpec(
    "memories",
    "id",
    ("id", "owner", "about", "observation", "details", "created_at"),
    user_refs=("owner", "about"),
    json_columns=("details",),
)
FILE_GLOB = "thread_*.jsonl"
#: Record "families" stamped by `adapters.files.memories`; never matched against KV keys.
FILE = Family("file", "file:" + FILE_GLOB, frozenset({"jsonl"}), rank=10)
UNREADABLE = Family("unreadable", "file:" + FILE_GLOB, frozenset({"jsonl"}))
_MAPPED = ("id", "timestamp", "observation", "from", "about")


class Memories(EntityBase):
    """Memories have no KV family (`families` is empty, so no key ever matches); their records
    come from files, and `family()` knows the two kinds the memory-file reader produces, so the
    shared `transform` (type check, dispatch, Bad → reject, never raises) applies unchanged."""

    name = "memories"
    load_order = 70
    families: tuple[Family, ...] = ()
    tables: tuple[TableSpec, ...] = (TABLE,)

    def family(self, name: str) -> Family:
        for fam in (FILE, UNREADABLE):
            if fam.name == name:
                return fam
        raise KeyError(name)

    def from_file(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_type", f"unexpected value of type {type(record.value).__name__}")
        fields = c.checked_object(record.value, what="line")
        row, changed = memory_row(fields)
        stats = {"handle_normalised": changed} if changed else {}
        return Outcome(rows=(Row(TABLE.name, row, FILE.rank),), stats=stats)

    def from_unreadable(self, record: RawRecord) -> Outcome:
        error = record.value.decode("utf-8", "replace") if isinstance(record.value, bytes) else "?"
        raise c.Bad("unreadable_file",
                    f"the file could not be read ({error}); its unread lines did not migrate")


def memory_row(fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The `memories` row for one line, and how many handles normalising changed; or raise Bad."""
    memory_id = required_text(fields, "id")
    handles: dict[str, str] = {}
    changed = 0
    for column, name in (("owner", "from"), ("about", "about")):
        raw = fields.get(name)
        if raw is None or raw == "":
            raise c.Bad("missing_field", f"the memory has no {name!r} handle")
        handles[column] = c.handle(raw, what=name)
        changed += handles[column] != raw
    row = {
        "id": memory_id,
        **handles,
        "observation": required_text(fields, "observation"),
        "details": {k: v for k, v in fields.items() if k not in _MAPPED},
        "created_at": c.optional_timestamp(fields.get("timestamp")),
    }
    return row, changed


MEMORIES = Memories()
