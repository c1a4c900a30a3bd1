"""Messages / DMs: every generation and copy of a message → one `messages` row each.

Sources, highest rank first (the loader keeps the highest-ranked copy of an id): `msg:{id}`
(40), the inbox lists `messages:{to}` (30), `thread:{a}:{b}` lists (20; JSON messages or bare
ids), and the oldest archive `vibe:messages` (10; one JSON array). `inbox:*` / `outbox:*` id lists
and thread ids are references only (an id whose message is gone is counted as dangling, not
rejected); `unread:*` counters produce no rows of their own: each `messages:{to}` list is read
with its `unread:{to}` hash, which holds the read state of that list's messages.

Rules (README, "Data rules"):
* every shape maps to the same canonical row: `content` ← `body`, else `text` (the first that
  is text; the other is kept in `_extra` when it differs); `created_at` ← `timestamp` (ms) /
  `createdAt` / `created_at` (the first present; NULL when none); `read` ← `read_at`/`readAt`
  not null, or `read` true; a missing `to` is the key's handle in `messages:{to}`, and the
  other handle of the key in `thread:{a}:{b}` when `from` is one of the two;
* `payload` ← the message's own `payload` object, else `{"type": type}`, else NULL; every other
  field (`system`, `signature`, `v`, `consent`, the read time as ISO UTC `read_at`, a
  disagreeing alias, …) goes under `payload["_extra"]`, creating the object if needed;
* a `msg:{id}` record without an id takes the key's id; any other message without an id gets
  `kvm_` + the first 24 hex digits of the SHA-256 of the JSON array [from, to, created_at ISO
  UTC or null, content] (handles normalised), so its copies in several lists dedupe;
* a broken list item (invalid JSON, no content, bad handle) is an item reject `[index]`; the
  other items migrate;
* a message whose payload is a finished game also yields a `game_results` row (see games).

Read state (README, "Data rules"): it only moves one way.
* A `messages:{to}` element never gets a `read_at`; its read state is the `unread:{to}` hash
  (sender → count), as the app's inbox reads it: with N = the count for sender S (fields
  normalised like handles, 0 when absent, and when the hash does not exist), the newest N
  elements from S to `to` are unread and older ones read. A `read_at` on the element still
  counts as read.
* Several copies of one message (`msg:{id}`, `messages:{to}`, `thread:…`, `vibe:messages`): the
  highest-ranked copy gives the row, but the message is read when any copy is read (a `msg:*`
  copy saying read beats counters saying unread, and counters saying read beat a `msg:*` copy
  saying unread), and `payload._extra.read_at` is the earliest read time of any copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from kvmigrate.entities import common as c
from kvmigrate.entities import games
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.entities.message_copies import combine
from kvmigrate.model.records import Outcome, RawRecord, Reject, Row

_MSG_RANK = 40  # `msg:{id}`, the highest-ranked copy of a message
MESSAGES_TABLE = TableSpec(
    "messages",
    "id",
    ("id", "from_handle", "to_handle", "content", "payload", "read", "created_at"),
    user_refs=("from_handle", "to_handle"),
    merge="fill",
    json_columns=("payload",),
    combine=combine,
    sample_whole=False,  # a sample reads only the copies drawn; a full verify reads them all
    derivable=True,  # a message with one copy is its row; only copies of one id are recorded
    key_owner=("msg:", _MSG_RANK),  # `msg:{id}` owns the row `id`: its ledger row says so
)
_CONTENT_KEYS = ("body", "text")
_TIME_KEYS = ("timestamp", "createdAt", "created_at")
_READ_KEYS = ("read_at", "readAt")
#: The keys of a message the fast path takes (see `_plain_message`).
_PLAIN = frozenset({"id", "from", "to", "read", *_CONTENT_KEYS, *_TIME_KEYS})
_TIME_SET = frozenset(_TIME_KEYS)
_MAPPED = frozenset({"id", "from", "to", "payload", "type", "read",
                     *_CONTENT_KEYS, *_TIME_KEYS, *_READ_KEYS})
_LIST = frozenset({"list"})


class Messages(EntityBase):
    name = "messages"
    load_order = 20
    families = (
        Family("msg", "msg:*", frozenset({"string"}), rank=_MSG_RANK),
        Family("inbox", "messages:*", _LIST, rank=30, companion="unread"),
        Family("thread", "thread:*", _LIST, rank=20, refers=True),
        Family("archive", "vibe:messages", frozenset({"string"}), rank=10),
        Family("inbox_ids", "inbox:*", _LIST, index=True),
        Family("outbox_ids", "outbox:*", _LIST, index=True),
        Family("unread", "unread:*", frozenset({"hash"}), index=True),
    )
    tables = (MESSAGES_TABLE, games.TABLE)

    def from_msg(self, record: RawRecord) -> Outcome:
        msg = c.checked_object(_string(record))
        return parse_message(msg, default_id=record.key.split(":", 1)[1]).outcome(_MSG_RANK)

    def from_inbox(self, record: RawRecord) -> Outcome:
        owner = record.key.split(":", 1)[1]
        out = _Collector(record.key, self.family("inbox").rank)
        for i, raw in enumerate(_items(record)):
            out.message(i, raw, default_to=owner)
        if record.companion is not None:
            _read_from_counters(out, owner, record.companion)
        return out.outcome()

    def from_thread(self, record: RawRecord) -> Outcome:
        out = _Collector(record.key, self.family("thread").rank)
        for i, raw in enumerate(_items(record)):
            out.message_or_id(i, raw)
        return out.outcome()

    def from_archive(self, record: RawRecord) -> Outcome:
        array = c.load_json(_string(record))
        if not isinstance(array, list):
            raise c.Bad("wrong_json_type", f"value is JSON {type(array).__name__}, expected an array")
        out = _Collector(record.key, self.family("archive").rank)
        for i, item in enumerate(array):
            out.message(i, item)
        return out.outcome()

    def from_inbox_ids(self, record: RawRecord) -> Outcome:
        return _id_list(record)

    def from_outbox_ids(self, record: RawRecord) -> Outcome:
        return _id_list(record)

    def from_unread(self, record: RawRecord) -> Outcome:
        """Unread counters are derived from the messages' `read` flags: nothing to migrate."""
        return Outcome()


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see kvmigrate.model.records
class Message:
    """One parsed message: its canonical row values, the payload as sent (for game results),
    how many handles normalising changed, and whether the id was derived."""

    values: dict[str, Any]
    source_payload: Any
    normalised: int
    derived_id: bool

    def rows(self, rank: int) -> tuple[Row, ...]:
        v = self.values
        row = Row(MESSAGES_TABLE.name, v, rank)
        if not isinstance(self.source_payload, dict):  # no game in it (most messages)
            return (row,)
        game = games.game_from_message(v["id"], v["from_handle"], v["to_handle"], self.source_payload,
                                       v["created_at"], rank)
        return (row,) if game is None else (row, game)

    def stats(self) -> dict[str, int]:
        if not self.normalised and not self.derived_id:
            return {}  # most messages
        counts = {"handle_normalised": self.normalised, "derived_id": int(self.derived_id)}
        return {k: n for k, n in counts.items() if n}

    def outcome(self, rank: int) -> Outcome:
        """The message as a record of its own: `rows` and `stats`, in one outcome."""
        if not isinstance(self.source_payload, dict) and not self.normalised and not self.derived_id:
            return Outcome((Row(MESSAGES_TABLE.name, self.values, rank),))  # most messages: one row, no stats
        return Outcome(rows=self.rows(rank), stats=self.stats())


def parse_message(m: dict[str, Any], *, default_to: str | None = None,
                  default_id: str | None = None) -> Message:
    """The canonical `messages` row for one message object of any shape, or raise Bad.
    `default_to` is the (raw) handle to use when the message has no `to`, `default_id` the id
    when it has none (the key's id for `msg:{id}`; else the id is derived)."""
    if m.keys() <= _PLAIN:  # no payload, type, read time or other field: most messages
        plain = _plain_message(m, default_to, default_id)
        if plain is not None:
            return plain
    return _any_message(m, default_to, default_id)


def _any_message(m: dict[str, Any], default_to: str | None, default_id: str | None) -> Message:
    """`parse_message` by the general rules, for a message of any shape."""
    sender, to, normalised = _handles(m, default_to)
    content, extra = _content(m)
    created_at, time_extra = _created_at(m)
    read, read_extra = _read(m)
    payload, payload_extra = _payload(m)
    unmapped = {k: v for k, v in m.items() if k not in _MAPPED}
    for more in (extra, time_extra, read_extra, payload_extra):  # later ones win, as with `|`
        if more:
            unmapped.update(more)
    extra = unmapped
    msg_id, derived = _message_id(m.get("id") or default_id, sender, to, created_at, content)
    values = {"id": msg_id, "from_handle": sender, "to_handle": to, "content": content,
              "payload": games.with_extra(payload, extra), "read": read, "created_at": created_at}
    return Message(values, m.get("payload"), normalised, derived)


def _plain_message(m: dict[str, Any], default_to: str | None, default_id: str | None) -> Message | None:
    """`parse_message` of a message holding only keys of `_PLAIN`, with one content field
    that is text and at most one time: what `_any_message` makes of it (no payload, nothing
    for `_extra`), with less work; None for any other message."""
    body, text = m.get("body"), m.get("text")
    content = body if text is None else text if body is None else None
    if not isinstance(content, str):
        return None
    times = m.keys() & _TIME_SET  # a set operation, not a loop: most messages have one
    if len(times) > 1:
        return None
    sender, to, normalised = _handles(m, default_to)
    if times:
        (when,) = times
        created_at = c.optional_timestamp(m[when], what=when)
    else:
        created_at = None
    read = c.boolean(m.get("read"), what="read")
    msg_id, derived = _message_id(m.get("id") or default_id, sender, to, created_at, content)
    values = {"id": msg_id, "from_handle": sender, "to_handle": to, "content": content,
              "payload": None, "read": read, "created_at": created_at}
    return Message(values, None, normalised, derived)


def derived_id(sender: str, to: str, created_at: datetime | None, content: str) -> str:
    """The id of a message that has none: stable across every copy of the message."""
    key = orjson.dumps([sender, to, created_at.isoformat() if created_at else None, content])
    return "kvm_" + hashlib.sha256(key).hexdigest()[:24]


def _message_id(raw: Any, sender: str, to: str, created_at: datetime | None,
                content: str) -> tuple[str, bool]:
    if raw is None or raw == "":
        return derived_id(sender, to, created_at, content), True
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw), False
    if not isinstance(raw, str):
        raise c.Bad("wrong_type", f"id is {type(raw).__name__}, expected text")
    return raw, False


def _handles(m: dict[str, Any], default_to: str | None) -> tuple[str, str, int]:
    raw_from, raw_to = m.get("from"), m.get("to")
    if type(raw_from) is str and type(raw_to) is str:  # most messages: two handles, each as text
        sender, to = c.normal_handle(raw_from), c.normal_handle(raw_to)
        if sender is not None and to is not None:  # else: empty or invalid, said below
            return sender, to, int(sender != raw_from) + int(to != raw_to)
    if raw_to is None or raw_to == "":
        raw_to = default_to
    for name, raw in (("from", raw_from), ("to", raw_to)):
        if raw is None or raw == "":
            raise c.Bad("missing_field", f"message has no `{name}`")
    sender, to = c.handle(raw_from, what="from"), c.handle(raw_to, what="to")
    return sender, to, int(sender != raw_from) + int(to != raw_to)


def _content(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    body, text = m.get("body"), m.get("text")
    only = body if text is None else text if body is None else None
    if isinstance(only, str):  # one of them, and text: most messages
        return only, {}
    present = [(k, m[k]) for k in _CONTENT_KEYS if m.get(k) is not None]
    texts = [v for _, v in present if isinstance(v, str)]
    if not present:
        raise c.Bad("missing_field", "message has neither `body` nor `text`")
    if not texts:
        raise c.Bad("wrong_type", "message `body`/`text` is not text")
    return texts[0], {k: v for k, v in present if v != texts[0]}


def _created_at(m: dict[str, Any]) -> tuple[datetime | None, dict[str, Any]]:
    found: datetime | None = None
    extra: dict[str, Any] = {}
    for k in _TIME_KEYS:
        if found is None:
            found = c.optional_timestamp(m.get(k), what=k)
        elif not _absent(m.get(k)) and _time_or_raw(m[k], k) != found:
            extra[k] = m[k]
    return found, extra


def _read(m: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    if "read_at" not in m and "readAt" not in m:  # no read time: the flag alone (most messages)
        return c.boolean(m.get("read"), what="read"), {}
    times = [(k, m[k]) for k in _READ_KEYS if not _absent(m.get(k))]
    flag = c.boolean(m.get("read"), what="read")
    if not times:
        return flag, {}
    first = _time_or_raw(times[0][1], times[0][0])
    extra = {"read_at": first.isoformat() if isinstance(first, datetime) else first}
    extra |= {k: v for k, v in times[1:] if _time_or_raw(v, k) != first}
    return True, extra


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "null"))


def _time_or_raw(raw: Any, what: str) -> Any:
    """A time parsed to UTC when it parses, else the raw value (kept as is, never rejected)."""
    try:
        return c.timestamp(raw, what=what)
    except c.Bad:
        return raw


def _payload(m: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    own, kind = m.get("payload"), m.get("type")
    extra: dict[str, Any] = {}
    if isinstance(own, dict):
        if kind is not None and kind != own.get("type"):
            extra["type"] = kind
        return dict(own), extra
    if own is not None:
        extra["payload"] = own
    return ({"type": kind} if kind not in (None, "") else None), extra


@dataclass
class _Collector:
    """Rows, references and item rejects of one container key (a list or the archive)."""

    key: str
    rank: int
    rows: list[Row] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    rejects: list[tuple[str, Reject]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def message(self, index: int, item: Any, *, default_to: str | None = None) -> None:
        """Turn item `index` (JSON bytes, or an already parsed value) into rows, or note an
        item reject."""
        try:
            obj = c.checked_object(item, what="item") if isinstance(item, bytes) else c.check_json_text(_object(item))
            parsed = parse_message(obj, default_to=default_to)
        except c.Bad as exc:
            self.reject(index, exc, item)
            return
        self.rows.extend(parsed.rows(self.rank))
        for name, n in parsed.stats().items():
            self.stats[name] = self.stats.get(name, 0) + n

    def message_or_id(self, index: int, raw: bytes) -> None:
        """A thread item: a JSON message object, or the id of a `msg:{id}` record."""
        try:
            item = _message_or_id(raw)
        except c.Bad as exc:
            self.reject(index, exc, raw)
            return
        if isinstance(item, str):
            self.refs.append(item)
        else:
            self.message(index, item, default_to=_thread_partner(self.key, item.get("from")))

    def reject(self, index: int, exc: c.Bad, item: Any) -> None:
        raw = item if isinstance(item, bytes) else c.dumps(item)
        self.rejects.append((f"[{index}]", Reject(exc.code, f"{self.key} [{index}]: {exc}", raw)))

    def outcome(self) -> Outcome:
        return Outcome(rows=tuple(self.rows), item_rejects=tuple(self.rejects), stats=self.stats,
                       refs=tuple(self.refs))


def _read_from_counters(out: _Collector, owner: str, counters: Any) -> None:
    """Set `read` on the messages of a `messages:{owner}` list (newest first) from its
    `unread:{owner}` hash, as the app's inbox does (module rules)."""
    unread = _counts(counters, out.stats)
    try:
        to = c.handle(owner)
    except c.Bad:
        return
    seen: dict[str, int] = {}
    for i, row in enumerate(out.rows):
        v = row.values
        if row.table != MESSAGES_TABLE.name or v["to_handle"] != to:
            continue
        k = seen.get(v["from_handle"], 0)
        seen[v["from_handle"]] = k + 1
        if not v["read"] and k >= unread.get(v["from_handle"], 0):
            out.rows[i] = replace(row, values={**v, "read": True})
            out.stats["read_by_counters"] = out.stats.get("read_by_counters", 0) + 1
    beyond = sum(1 for h, n in unread.items() if n > seen.get(h, 0))
    if beyond:
        out.stats["unread_count_exceeds_list"] = out.stats.get("unread_count_exceeds_list", 0) + beyond


def _counts(counters: Any, stats: dict[str, int]) -> dict[str, int]:
    """sender handle -> unread count from an `unread:{to}` hash (fields normalised and summed);
    a field that is not a handle or a count that is not a whole number is counted, not used."""
    out: dict[str, int] = {}
    for raw_field, raw_count in (counters.items() if isinstance(counters, dict) else ()):
        try:
            sender = c.handle(c.text(raw_field, what="unread field"), what="unread field")
            n = c.integer(c.text(raw_count, what="unread count"), what="unread count") or 0
        except c.Bad:
            stats["bad_unread_counter"] = stats.get("bad_unread_counter", 0) + 1
            continue
        out[sender] = out.get(sender, 0) + max(n, 0)
    return out


def _thread_partner(key: str, sender: Any) -> str | None:
    """In `thread:{a}:{b}`, the handle that is not `sender` (None when sender is neither)."""
    parts = key.split(":")
    if len(parts) != 3:
        return None
    try:
        a, b, me = (c.handle(h) for h in (parts[1], parts[2], sender))
    except c.Bad:
        return None
    return b if me == a else a if me == b else None


def _id_list(record: RawRecord) -> Outcome:
    """An `inbox:*`/`outbox:*` list of message ids: references only, no rows."""
    out = _Collector(record.key, 0)
    for i, raw in enumerate(_items(record)):
        try:
            out.refs.append(_message_id_item(c.text(raw, what="item")))
        except c.Bad as exc:
            out.reject(i, exc, raw)
    return out.outcome()


def _message_or_id(raw: bytes) -> dict[str, Any] | str:
    s = c.text(raw, what="item")
    if s.lstrip().startswith("{"):
        return c.json_object(s, what="item")
    return _message_id_item(s)


def _message_id_item(s: str) -> str:
    """A list item naming a message: the id as stored (or a JSON-quoted id, unquoted)."""
    if s.startswith('"'):
        value = c.load_json(s, what="item")
        if not isinstance(value, str):
            raise c.Bad("wrong_json_type", f"item is JSON {type(value).__name__}, expected an id")
        s = c.text(value, what="item")
    if not s.strip():
        raise c.Bad("missing_field", "item is an empty message id")
    return s


def _object(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise c.Bad("wrong_json_type", f"item is JSON {type(item).__name__}, expected an object")
    return item


def _items(record: RawRecord) -> list[bytes]:
    items = record.value if isinstance(record.value, list) else None
    if items is None or not all(isinstance(v, bytes) for v in items):
        raise c.Bad("wrong_redis_type", "the value is not a list of strings")
    return [v for v in items if isinstance(v, bytes)]


def _string(record: RawRecord) -> bytes:
    if not isinstance(record.value, bytes):
        raise c.Bad("wrong_redis_type", f"unexpected value of type {type(record.value).__name__}")
    return record.value


MESSAGES = Messages()
