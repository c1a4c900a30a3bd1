"""Parsing rules shared by every transformer. Each returns a value or raises `Bad`, which the
transformer turns into a Reject; nothing here guesses silently.

Documented rules (README, "Data rules"):
* text must be valid UTF-8 and may not contain NUL (Postgres TEXT/JSONB cannot store it);
* a value larger than MAX_VALUE_BYTES is rejected (`too_large`);
* JSON nested more than MAX_JSON_DEPTH (100) levels deep is rejected (`too_deep`);
* handles are normalised: trim, strip one leading `@`, lowercase, `-` → `_`; a result outside
  `[a-z0-9_]{1,40}` is rejected (`invalid_handle`);
* timestamps: epoch milliseconds (or seconds when < 1e11) as number or numeric string, or
  ISO 8601 (a naive one is taken as UTC); anything outside 2000-01-01..2100-01-01 is
  `bad_timestamp`.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Any

import orjson

MAX_VALUE_BYTES = 5 * 1024 * 1024
MAX_JSON_DEPTH = 100
SYSTEM_HANDLES = frozenset({"vibe", "system", "solienne"})
_HANDLE_RE = re.compile(r"^[a-z0-9_]{1,40}$")
_MIN_TS = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MAX_TS = datetime(2100, 1, 1, tzinfo=timezone.utc)


class Bad(ValueError):
    """A value that cannot be migrated: `code` is the stable reason, str() the human message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def text(raw: bytes | str, *, what: str = "value") -> str:
    """Decode UTF-8 bytes; reject invalid UTF-8, NUL bytes and oversized values."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_VALUE_BYTES:
            raise Bad("too_large", f"{what} is {len(raw)} bytes, over the {MAX_VALUE_BYTES} limit")
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Bad("invalid_utf8", f"{what} is not valid UTF-8 (byte {exc.start})") from None
    else:
        s = raw
    if "\x00" in s:
        raise Bad("nul_byte", f"{what} contains a NUL byte, which Postgres cannot store")
    return s


def load_json(raw: bytes | str, *, what: str = "value") -> Any:
    """Parse JSON text (after the `text` checks); reject invalid or too deeply nested JSON."""
    if isinstance(raw, bytes) and len(raw) <= MAX_VALUE_BYTES:
        try:  # orjson checks UTF-8 itself, and JSON holds no raw NUL: one pass for the good case
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # say why: invalid UTF-8 or a NUL byte first (as `text` does), else invalid JSON
    s = text(raw, what=what)
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError as exc:
        raise Bad("invalid_json", f"{what} is not valid JSON: {exc}") from None


def json_object(raw: bytes | str, *, what: str = "value") -> dict[str, Any]:
    """Parse JSON that must be an object."""
    obj = load_json(raw, what=what)
    if not isinstance(obj, dict):
        raise Bad("wrong_json_type", f"{what} is JSON {type(obj).__name__}, expected an object")
    return obj


def checked_object(raw: bytes | str, *, what: str = "value") -> dict[str, Any]:
    """`json_object`, then `check_json_text` (NUL characters, depth), skipped when the text
    itself proves the value clean: no `\\u0000` escape, and no more brackets than the depth
    allowed (a value nested d levels deep holds at least d of them)."""
    obj = json_object(raw, what=what)
    if isinstance(raw, bytes):
        clean = b"\\u0000" not in raw and raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH
    else:
        clean = "\\u0000" not in raw and raw.count("{") + raw.count("[") <= MAX_JSON_DEPTH
    return obj if clean else check_json_text(obj, what=what)


def check_json_text(obj: Any, *, what: str = "value") -> Any:
    """Reject NUL characters anywhere inside a JSON value (JSONB cannot hold \\u0000) and values
    nested deeper than MAX_JSON_DEPTH (`too_deep`)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise Bad("nul_byte", f"{what} contains a NUL character, which Postgres cannot store")
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise Bad("too_deep", f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
            parts = [p for kv in item.items() for p in kv] if isinstance(item, dict) else item
            stack.extend((p, depth + 1) for p in parts)
    return obj


def dumps(obj: Any) -> bytes:
    """JSON bytes of a parsed value, for a reject's original value; never raises."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:  # nested deeper than orjson writes
        return orjson.dumps(f"<a JSON {type(obj).__name__} nested too deeply to show>")


def handle(raw: Any, *, what: str = "handle") -> str:
    """Normalise a handle (trim, strip one leading @, lowercase, - → _) or reject it."""
    if not isinstance(raw, str):
        raise Bad("invalid_handle", f"{what} is {type(raw).__name__}, expected text")
    h = raw.strip()
    if h.startswith("@"):
        h = h[1:]
    h = h.lower().replace("-", "_")
    if not _HANDLE_RE.match(h):
        raise Bad("invalid_handle", f"{what} {raw!r} is not a valid handle after normalising")
    return h


def optional_handle(raw: Any, *, what: str = "handle") -> str | None:
    """Like `handle`, but None, "", and "null" mean no handle."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return None
    return handle(raw, what=what)


def timestamp(raw: Any, *, what: str = "timestamp") -> datetime:
    """Parse an epoch (ms, or s when < 1e11) or ISO 8601 value to an aware UTC datetime."""
    if isinstance(raw, bool) or raw is None:
        raise Bad("bad_timestamp", f"{what} is {raw!r}, expected a time")
    value: Any = raw
    if isinstance(value, str):
        s = value.strip()
        try:
            value = float(s) if s.replace(".", "", 1).lstrip("-").isdigit() else s
        except ValueError:
            value = s
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise Bad("bad_timestamp", f"{what} {raw!r} is not a number")
        seconds = value / 1000.0 if abs(value) >= 1e11 else float(value)
        try:
            dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise Bad("bad_timestamp", f"{what} {raw!r} is out of range") from None
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Bad("bad_timestamp", f"{what} {raw!r} is not an ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        dt = dt.astimezone(timezone.utc)
    else:
        raise Bad("bad_timestamp", f"{what} is {type(raw).__name__}, expected a time")
    if not _MIN_TS <= dt < _MAX_TS:
        raise Bad("bad_timestamp", f"{what} {raw!r} is outside 2000..2100")
    return dt


def optional_timestamp(raw: Any, *, what: str = "timestamp") -> datetime | None:
    """Like `timestamp`, but None, "", and "null" mean no time."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return None
    return timestamp(raw, what=what)


def day(raw: Any, *, what: str = "date") -> date | None:
    """Parse a YYYY-MM-DD date (or a full timestamp, taking its UTC date); None/""/"null" → None."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return None
    if isinstance(raw, str) and len(raw.strip()) == 10 and not raw.strip().isdigit():  # digits: epoch seconds
        try:
            d = date.fromisoformat(raw.strip())
        except ValueError:
            raise Bad("bad_timestamp", f"{what} {raw!r} is not a YYYY-MM-DD date") from None
        if not 2000 <= d.year < 2100:
            raise Bad("bad_timestamp", f"{what} {raw!r} is outside 2000..2100")
        return d
    return timestamp(raw, what=what).date()


def integer(raw: Any, *, what: str = "number", default: int | None = 0) -> int | None:
    """Parse an int from a number or a numeric string ("3"); None/"" → default."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return default
    if isinstance(raw, bool):
        raise Bad("wrong_type", f"{what} is a boolean, expected a number")
    try:
        f = float(raw)
    except (TypeError, ValueError):
        raise Bad("wrong_type", f"{what} {raw!r} is not a number") from None
    if f != f or abs(f) == float("inf") or f != int(f):
        raise Bad("wrong_type", f"{what} {raw!r} is not a whole number")
    n = int(f)
    if not -(2**31) <= n < 2**31:
        raise Bad("out_of_range", f"{what} {raw!r} does not fit a 32-bit integer")
    return n


def boolean(raw: Any, *, what: str = "flag") -> bool:
    """Parse a boolean from true/false, "true"/"false", 1/0, "1"/"0"; None → False."""
    if raw is None:
        return False
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "", "null"):
        return raw.strip().lower() in ("true", "1")
    raise Bad("wrong_type", f"{what} {raw!r} is not a boolean")


def hash_text(raw: dict[bytes, bytes], *, what: str = "hash") -> dict[str, str]:
    """Decode a Redis hash (bytes → bytes) to str → str with the `text` checks on each part."""
    return {text(k, what=f"{what} field"): text(v, what=f"{what} field {k!r}") for k, v in raw.items()}


def unjson(value: str) -> Any:
    """Hash fields are strings: turn "null"/"true"/"3"/JSON text back into values, else keep text."""
    s = value.strip()
    if s in ("null", "true", "false") or (s[:1] in "[{\"" and s) or _looks_numeric(s):
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return value
    return value


def _looks_numeric(s: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(\.\d+)?", s))
