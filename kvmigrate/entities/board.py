"""Board posts: `board:entry:{id}` → one `board_posts` row; the id lists are indexes.

Two codebases wrote the same key shape (KV-LAYOUT.md):
* A: `{id: "entry_<ms>_<hex>", author, content, category, tags, timestamp}`;
* B: `{id: "<category>_<ms>_<rand>", author, category, content, tags, timestamp, reactions,
  comments}`.
`board:entries` (trimmed to the newest 100), `board:category:{c}` and `board:user:{h}` are id
lists: they migrate with zero rows. Every `board:entry:*` key is read by the scan, so entries no
list points to any more still migrate.

Rules (README, "Data rules"): the id is the key's suffix after `board:entry:` (a different `id`
inside the value is kept in `details`); `author` is required and normalised; `content` is
required text; `category` defaults to "general"; `tags` is a list of text — a comma-separated
string is accepted and split on commas (pieces trimmed, empty pieces dropped, counted as
`tags_split`), anything else is `wrong_type`; `created_at` comes from `timestamp`, else
`createdAt` (neither: empty); `reactions`, `comments` and every other field go to `details`.
"""

from __future__ import annotations

from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Outcome, RawRecord, Row

TABLE = TableSpec(
    "board_posts",
    "id",
    ("id", "author", "content", "category", "tags", "details", "created_at"),
    user_refs=("author",),
    json_columns=("details",),
)
ENTRY_PREFIX = "board:entry:"
_LIST = frozenset({"list"})


class Board(EntityBase):
    name = "board"
    load_order = 30
    families = (
        Family("entry", ENTRY_PREFIX + "*", frozenset({"string"}), rank=10),
        Family("entries", "board:entries", _LIST, index=True),
        Family("category", "board:category:*", _LIST, index=True),
        Family("by_user", "board:user:*", _LIST, index=True),
    )
    tables = (TABLE,)

    def from_entry(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_redis_type", f"unexpected value of type {type(record.value).__name__}")
        post_id = c.text(record.key[len(ENTRY_PREFIX):], what="id in the key")
        if not post_id:
            raise c.Bad("missing_field", "the key has no id after board:entry:")
        fields = c.checked_object(record.value)
        row, stats = post_row(post_id, fields)
        return Outcome(rows=(Row(TABLE.name, row, self.family("entry").rank),), stats=stats)

    def from_entries(self, record: RawRecord) -> Outcome:
        return Outcome()

    def from_category(self, record: RawRecord) -> Outcome:
        return Outcome()

    def from_by_user(self, record: RawRecord) -> Outcome:
        return Outcome()


def post_row(post_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The `board_posts` row for one entry (either shape) and its stats, or raise Bad."""
    stats: dict[str, int] = {}
    raw_author = fields.get("author")
    if raw_author is None or raw_author == "":
        raise c.Bad("missing_field", "the entry has no author")
    author = c.handle(raw_author, what="author")
    if author != raw_author:
        stats["handle_normalised"] = 1
    tags, split = _tags(fields.get("tags"))
    if split:
        stats["tags_split"] = 1
    time_field = "timestamp" if fields.get("timestamp") is not None else "createdAt"
    details = {k: v for k, v in fields.items()
               if k not in ("author", "content", "category", "tags", time_field, "id")}
    if "id" in fields and fields["id"] != post_id:
        details["id"] = fields["id"]
    row = {
        "id": post_id,
        "author": author,
        "content": required_text(fields, "content"),
        "category": _category(fields.get("category")),
        "tags": tags,
        "details": details,
        "created_at": c.optional_timestamp(fields.get(time_field), what=time_field),
    }
    return row, stats


def required_text(fields: dict[str, Any], name: str) -> str:
    """A field that must be non-empty text: missing/null/"" → missing_field, else wrong_type."""
    value = fields.get(name)
    if value is None or value == "":
        raise c.Bad("missing_field", f"{name} is missing or empty")
    if not isinstance(value, str):
        raise c.Bad("wrong_type", f"{name} is {type(value).__name__}, expected text")
    return value


def _category(value: Any) -> str:
    if value is None or value == "":
        return "general"
    if not isinstance(value, str):
        raise c.Bad("wrong_type", f"category is {type(value).__name__}, expected text")
    return value


def _tags(value: Any) -> tuple[list[str], bool]:
    """Tags as a list of text, and whether they had to be split from a comma-separated string."""
    if value is None:
        return [], False
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()], True
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value), False
    raise c.Bad("wrong_type", "tags must be a list of text (or one comma-separated text)")


BOARD = Board()
