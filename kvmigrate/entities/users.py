"""Users: four sources of the same handle → one `users` row, merged column by column.

Sources (KV-LAYOUT.md "Users"), highest rank first: the registry hashes `vibe:handles` (40),
`vibe:agents` (30) and `vibe:users` (20), whose fields are handles and values JSON records, and
the legacy `user:{handle}` hash of strings (10). Each record becomes one row with the columns it
does not know left NULL; the loader's `fill` merge lets the higher rank win column by column,
lower ranks fill NULL columns, and `settings` merge key by key (the higher rank wins a key).

Rules (README, "Data rules"):
* the hash field (or the key's suffix) is the identity, normalised; the record's own
  `handle`/`username` is dropped when it names the same handle, else kept in `settings` under
  its own name (stat `handle_mismatch`);
* display_name ← display_name/displayName; one_liner ← one_liner/building; created_at ←
  registeredAtTs/registeredAt/createdAt/created_at/registered_at; invited_by ←
  invited_by/invitedBy: the first with a value wins (null, "" and "null" count as no value); a
  later alias that disagrees with it is kept in `settings` under its own name;
* every other field goes to `settings`; values of the legacy hash are un-stringified there as
  the app's client reads them (`common.unjson`: "3" → 3, "null" → null, "true" → true; number
  text that is not a canonical safe integer, "1.5", "-0", "123456789012345678901234", stays text);
* secrets (SECRET_FIELDS: `api_key_hash`, `recoveryKey`, …) are never copied: the field is kept
  in `settings` with the value "[redacted]" (so merging sources keeps every name); the values
  survive only in the cleanup archive;
* an invited_by that is not a valid handle leaves invited_by NULL, keeps the raw value in
  `settings["invited_by_raw"]` and counts `invalid_invited_by`; a user may invite itself;
* a registry field whose JSON is not an object (wrong_json_type), a display name or one-liner
  that is not text (wrong_type), or a bad timestamp (bad_timestamp) rejects the record.

Merging the sources of one handle (`combine`):
* freshest value per field: for `display_name`, `one_liner` and each `settings` key, the source
  updated most recently that has a value wins — a source's time is its `updatedAt`/`updated_at`,
  else its `registeredAtTs`/`registeredAt`/`registered_at`/`createdAt`/`created_at`; a source
  with no time counts as older than any dated one, and among equal times the higher rank wins.
  So a one-liner the user edited in `user:{h}` (`building`, `updatedAt`) beats the registry's
  copy taken at claim time. `created_at` and `invited_by` are facts of the signup, not edits:
  the higher rank wins them, lower ones fill NULLs;
* keys that collapse into one handle (`user:Bob` and `user:bob`, registry fields `Bob` and `bob`):
  all their values take part in the merge above, and every source of a family but one (the one
  already in canonical form, else the freshest) is recorded as `merged`, never silently; the
  original value kept for it has its secret fields redacted, like `settings`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Merged, Outcome, RawRecord, Row, SourcedRow

T = TypeVar("T")

#: Columns whose freshest value wins (the rest: the higher rank wins, lower ones fill NULLs).
FRESH_COLUMNS = ("display_name", "one_liner")
_UPDATED = ("updatedAt", "updated_at")
_MADE = ("registeredAtTs", "registeredAt", "registered_at", "createdAt", "created_at")
MERGE_RULE = "the most recently updated source wins each field; the registry wins created_at and invited_by"


def combine(sources: Sequence[SourcedRow]) -> Merged:
    """One `users` row from every source of a handle (module rules); independent of order."""
    by_rank = sorted(sources, key=lambda r: r.order)
    by_fresh = sorted(sources, key=_freshness)
    values: dict[str, Any] = {}
    for src in by_rank:  # lowest first: the higher rank overwrites, NULLs never do
        values.update({k: v for k, v in src.values.items() if v is not None or k not in values})
    for col in FRESH_COLUMNS:
        chosen = [s.values[col] for s in by_fresh if s.values.get(col) is not None]
        values[col] = chosen[-1] if chosen else None
    settings: dict[str, Any] = {}
    for src in by_fresh:
        settings.update(src.values.get("settings") or {})
    values["settings"] = settings
    owner = by_rank[-1]
    away = _merged_away(sources)
    kept = tuple(s for s in by_rank if s is not owner and s not in away)
    row = SourcedRow(values, owner.rank, owner.source_key, owner.source_field, owner.meta)
    return Merged(row, away, MERGE_RULE if away else "", kept, reports=True)


def _freshness(src: SourcedRow) -> tuple[str, int, str, str]:
    return (str(src.meta.get("fresh") or ""), *src.order)


def _merged_away(sources: Sequence[SourcedRow]) -> tuple[SourcedRow, ...]:
    """Per family (one rank each), every source but the one named canonically (else the freshest)."""
    away: list[SourcedRow] = []
    for rank in sorted({s.rank for s in sources}):
        family = [s for s in sources if s.rank == rank]
        if len(family) > 1:
            keep = max(family, key=lambda s: (_canonical(s), _freshness(s)))
            away.extend(s for s in sorted(family, key=lambda r: r.order) if s is not keep)
    return tuple(away)


def _canonical(src: SourcedRow) -> bool:
    handle = src.values.get("handle")
    return src.source_field == handle if src.source_field else src.source_key == f"user:{handle}"


def freshness(fields: Mapping[str, Any]) -> str | None:
    """When a source was last updated (ISO UTC), from its own fields; None when it says nothing."""
    for names in (_UPDATED, _MADE):
        for name in names:
            if not absent(fields.get(name)):
                try:
                    return c.timestamp(fields[name], what=name).isoformat()
                except c.Bad:
                    continue
    return None


TABLE = TableSpec(
    "users",
    "handle",
    ("handle", "display_name", "one_liner", "created_at", "invited_by", "settings"),
    user_refs=("invited_by",),
    merge="fill",
    json_columns=("settings",),
    combine=combine,
)

#: Fields never copied into `settings`: each is kept with the value REDACTED.
REDACTED = "[redacted]"
SECRET_FIELDS = frozenset({
    "api_key_hash", "apiKeyHash", "api_key", "apiKey", "recoveryKey", "recovery_key",
    "privateKey", "private_key",
})
_DISPLAY = ("display_name", "displayName")
_ONE_LINER = ("one_liner", "building")
_CREATED = ("registeredAtTs", "registeredAt", "createdAt", "created_at", "registered_at")
_INVITED = ("invited_by", "invitedBy")
_SELF = ("handle", "username")
_MAPPED = frozenset(_DISPLAY + _ONE_LINER + _CREATED + _INVITED + _SELF) | SECRET_FIELDS
#: Legacy hash fields read as the text stored (a display name "123" stays text).
_LEGACY_TEXT = frozenset(_DISPLAY + _ONE_LINER + _INVITED + _SELF)
_UNPARSABLE = object()


class Users(EntityBase):
    name = "users"
    load_order = 10
    families: tuple[Family, ...] = (
        Family("handles", "vibe:handles", frozenset({"hash"}), rank=40, split_fields=True),
        Family("agents", "vibe:agents", frozenset({"hash"}), rank=30, split_fields=True),
        Family("registry_users", "vibe:users", frozenset({"hash"}), rank=20, split_fields=True),
        Family("legacy", "user:*", frozenset({"hash"}), rank=10),
    )
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_handles(self, record: RawRecord) -> Outcome:
        return self._from_registry(record)

    def from_agents(self, record: RawRecord) -> Outcome:
        return self._from_registry(record)

    def from_registry_users(self, record: RawRecord) -> Outcome:
        return self._from_registry(record)

    def from_legacy(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, dict):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected a hash")
        raw = c.hash_text(record.value)
        fields = {k: v if k in _LEGACY_TEXT else c.unjson(v) for k, v in raw.items()}
        c.check_json_text(fields)
        original = {"hash": [[k, REDACTED if k in SECRET_FIELDS else v] for k, v in raw.items()]}
        return self._outcome(record, record.key.split(":", 1)[1], fields, where="key", raw=original)

    def _from_registry(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected JSON text")
        fields = c.checked_object(record.value, what="record")
        if SECRET_FIELDS.isdisjoint(fields):
            original = {"text": c.text(record.value)}
        else:  # secrets never reach Postgres, not even in a merged source's original value
            original = {"text": c.dumps({k: REDACTED if k in SECRET_FIELDS else v for k, v in fields.items()}).decode()}
        return self._outcome(record, record.field, fields, where="field", raw=original)

    def _outcome(self, record: RawRecord, raw_handle: str, fields: Mapping[str, Any], *,
                 where: str, raw: dict[str, Any]) -> Outcome:
        handle = c.handle(raw_handle, what=f"handle {raw_handle!r} in the {where}")
        values, stats = user_row(handle, fields)
        if handle != raw_handle:
            stats["handle_normalised"] += 1
        rank = self.family(record.family).rank
        meta = {"raw": raw, "fresh": freshness(fields)}
        return Outcome(rows=(Row("users", values, rank, meta),), stats=dict(stats))


def user_row(handle: str, fields: Mapping[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """The `users` row for one record of any source (identity already normalised), with its
    stats; raise Bad for a value that cannot be migrated."""
    stats: Counter[str] = Counter()
    _, display_name, extra = pick(fields, _DISPLAY, _text)
    _, one_liner, more = pick(fields, _ONE_LINER, _text)
    extra.update(more)
    _, created_at, more = pick(fields, _CREATED, c.timestamp)
    extra.update(more)
    ref_name, ref, more = pick(fields, _INVITED, _reference)
    extra.update(more)
    invited_by: str | None = None
    if isinstance(ref, _NotAHandle):
        extra["invited_by_raw"] = ref.raw
        stats["invalid_invited_by"] += 1
    elif ref is not None:
        invited_by = ref
        if ref_name is not None and ref != fields[ref_name]:
            stats["handle_normalised"] += 1
    for name in _SELF:
        if name in fields and not _names(fields[name], handle):
            extra[name] = fields[name]
            stats["handle_mismatch"] += 1
    settings = {k: v for k, v in fields.items() if k not in _MAPPED}
    settings.update(extra)
    for name in sorted(k for k in fields if k in SECRET_FIELDS):
        settings[name] = REDACTED
    row = {"handle": handle, "display_name": display_name, "one_liner": one_liner,
           "created_at": created_at, "invited_by": invited_by, "settings": settings}
    return row, stats


def pick(fields: Mapping[str, Any], names: Sequence[str],
         parse: Callable[[Any], T]) -> tuple[str | None, T | None, dict[str, Any]]:
    """The first of `names` with a value (null, "" and "null" are no value), its parsed value,
    and the later names whose value disagrees with it (to keep in a JSONB column).

    Parsing the chosen value may raise Bad; a later alias that does not parse disagrees."""
    present = [n for n in names if not absent(fields.get(n))]
    if not present:
        return None, None, {}
    try:
        value = parse(fields[present[0]])
    except c.Bad as exc:
        raise c.Bad(exc.code, f"{present[0]}: {exc}") from None
    extra = {n: fields[n] for n in present[1:] if _try_parse(parse, fields[n]) != value}
    return present[0], value, extra


def absent(raw: Any) -> bool:
    """No value: None, "", or the text "null" (hash fields store JSON null as text)."""
    return raw is None or (isinstance(raw, str) and raw.strip() in ("", "null"))


def _try_parse(parse: Callable[[Any], T], raw: Any) -> T | object:
    try:
        return parse(raw)
    except c.Bad:
        return _UNPARSABLE


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise c.Bad("wrong_type", f"{raw!r} is {type(raw).__name__}, expected text")
    return raw


@dataclass(frozen=True)
class _NotAHandle:
    """An invited_by value that does not normalise to a valid handle."""

    raw: Any


def _reference(raw: Any) -> str | _NotAHandle:
    try:
        return c.handle(raw, what="invited_by")
    except c.Bad:
        return _NotAHandle(raw)


def _names(raw: Any, handle: str) -> bool:
    """Whether a record's own handle/username field names `handle` (or is empty)."""
    if absent(raw):
        return True
    try:
        return c.handle(raw) == handle
    except c.Bad:
        return False


USERS = Users()
