"""Parsing rules shared by every transformer. Each returns a value or raises `Bad`, which the
transformer turns into a Reject; nothing here guesses silently.

Documented rules (README, "Data rules"):
* text must be valid UTF-8 and may not contain NUL (Postgres TEXT/JSONB cannot store it);
* a value larger than MAX_VALUE_BYTES is rejected (`too_large`);
* JSON nested more than MAX_JSON_DEPTH (100) levels deep is rejected (`too_deep`);
* handles are normalised: trim, strip one leading `@`, lowercase, `-` → `_`; a result outside
  `[a-z0-9_]{1,40}` is rejected (`invalid_handle`);
* timestamps: epoch milliseconds (or seconds when < 1e11) as number or numeric string (ASCII
  digits, an optional `-` and fraction), or ISO 8601 (a naive one is taken as UTC); anything
  outside 2000-01-01..2100-01-01 is `bad_timestamp`;
* JSON numbers keep their exact digits: a number orjson would read as a float (a fraction, an
  exponent, an integer beyond 64 bits) is read again as a `Decimal` (ints stay exact Python
  ints), and written back as the same digits (`json_bytes`), as JSONB would keep them;
* whole-number columns take an int (or a number with no fraction) or text of ASCII digits with
  an optional leading `-`, exactly; anything else (`"1_0"`, `"٣"`, `" 3"`, `"2.5"`) is
  `wrong_type`, a value outside 32 bits `out_of_range`;
* hash fields (strings) are un-stringified as the app's client (`@upstash/redis`) reads them,
  and only where that loses nothing: JSON text becomes its value, a number only when it is a
  canonical safe integer (`"3"` → 3); any other number text (`"1.50"`, `"-0"`, `"1e3"`,
  `"123456789012345678901234"`) stays text.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import orjson

MAX_VALUE_BYTES = 5 * 1024 * 1024
MAX_JSON_DEPTH = 100
SYSTEM_HANDLES = frozenset({"vibe", "system", "solienne"})
_HANDLE_RE = re.compile(r"^[a-z0-9_]{1,40}$")
_MIN_TS = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MAX_TS = datetime(2100, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_S, _MAX_S = Decimal(int(_MIN_TS.timestamp())), Decimal(int(_MAX_TS.timestamp()))
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_SAFE_INTEGER_TEXT = re.compile(r"0|-?[1-9][0-9]{0,15}")
_MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
#: A JSON string (unrolled: `[^"\\]*` is a single-character repeat, which the regex engine runs
#: in constant memory; `(?:[^"\\]|\\.)*` keeps state per character, about 130 MB for an
#: unterminated 1 MB string) or a bracket.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


#: A JSON string, or a character that delimits an object's members.
_MEMBER_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


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
    """Parse JSON text (after the `text` checks), keeping every number's exact digits; reject
    invalid JSON (`invalid_json`) and JSON nested deeper than MAX_JSON_DEPTH (`too_deep`)."""
    if isinstance(raw, bytes) and len(raw) <= MAX_VALUE_BYTES:
        try:  # orjson checks UTF-8 itself, and JSON holds no raw NUL: one pass for the good case
            return _exact(orjson.loads(raw), raw, what)
        except orjson.JSONDecodeError:
            pass  # say why: invalid UTF-8 or a NUL byte first (as `text` does), else invalid JSON
    s = text(raw, what=what)
    try:
        return _exact(orjson.loads(s), s, what)
    except orjson.JSONDecodeError as exc:
        if _nested_deeper_than(s.encode("utf-8", "surrogatepass"), MAX_JSON_DEPTH):
            raise Bad("too_deep", f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
        raise Bad("invalid_json", f"{what} is not valid JSON: {exc}") from None


def _exact(value: Any, raw: bytes | str, what: str) -> Any:
    """`value` as orjson parsed `raw`, or `raw` parsed again with exact numbers when orjson
    rounded one (it reads fractions, exponents and integers past 64 bits as floats). Cheap
    when nothing was rounded: one orjson.dumps compared with the input, a walk only if they differ."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    try:
        if orjson.dumps(value) == (raw if isinstance(raw, bytes) else raw.encode()):
            return value  # every number printed back exactly as written
    except orjson.JSONEncodeError:
        pass  # nested deeper than orjson writes: walk it
    if not has_float(value):
        return value
    try:
        return json.loads(raw, parse_float=Decimal, parse_int=_exact_int, parse_constant=_no_constant)
    except RecursionError:
        raise Bad("too_deep", f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None


def _exact_int(digits: str) -> int | Decimal:
    try:
        return int(digits)
    except ValueError:  # over Python's digit limit for int(): still exact as a Decimal
        return Decimal(digits)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # orjson refused it first; never reached


def has_float(obj: Any) -> bool:
    """Whether a parsed JSON value holds a float anywhere (orjson reads fractions, exponents and
    integers past 64 bits as floats)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) is float:
            return True
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def _nested_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether JSON-ish text opens more than `limit` brackets at once (strings skipped)."""
    depth = 0
    for m in _JSON_TOKENS.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif tok in (b"]", b"}"):
            depth -= 1
    return False


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
    if isinstance(raw, bytes):
        clean = b"\\u0000" not in raw and raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH
    else:
        clean = "\\u0000" not in raw and raw.count("{") + raw.count("[") <= MAX_JSON_DEPTH
    if clean and isinstance(raw, bytes) and len(raw) <= MAX_VALUE_BYTES:  # most values: `load_json`'s first pass, inline
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # `json_object` below says why
        else:
            if type(value) is dict:
                return _exact(value, raw, what)
    obj = json_object(raw, what=what)
    return obj if clean else check_json_text(obj, what=what)


def object_members(raw: bytes) -> dict[str, bytes] | None:
    """The members of the JSON object `raw`, name -> the value's JSON text, without parsing the
    values (a repeated name keeps its first place and its last value, as a parsed object does);
    None unless `raw` is plainly a JSON object whose names are valid, with no `\\u0000` and no
    deeper than MAX_JSON_DEPTH. The values are not checked: a caller that finds one it cannot
    parse must parse `raw` whole (`checked_object`) for the error that names what is wrong."""
    if b"\\u0000" in raw:
        return None
    members: dict[str, bytes] = {}
    depth, deepest, pos, expect = 0, 0, 0, "open"
    name, start = "", 0
    for m in _MEMBER_TOKENS.finditer(raw):
        tok = m.group()
        if depth >= 2:  # inside a member's value
            if tok in (b"[", b"{"):
                depth += 1
                deepest = max(deepest, depth)
            elif tok in (b"]", b"}"):
                depth -= 1
            continue
        gap = raw[pos:m.start()]
        pos = m.end()
        if expect == "value":
            if tok in (b",", b"}"):
                value = raw[start:m.start()].strip()
                if not value:
                    return None
                members[name] = value
                expect, depth = ("name", 1) if tok == b"," else ("end", 0)
            elif tok in (b"[", b"{"):
                depth += 1
                deepest = max(deepest, depth)
            elif tok not in (b"]", b":") and tok[:1] != b'"':
                return None
            continue
        if gap.strip():
            return None
        if expect == "open" and tok == b"{":
            depth, expect = 1, "name"
        elif expect == "name" and tok[:1] == b'"':
            try:
                name = orjson.loads(tok)
            except orjson.JSONDecodeError:
                return None
            expect = "colon"
        elif expect == "name" and tok == b"}" and not members:
            depth, expect = 0, "end"
        elif expect == "colon" and tok == b":":
            start, expect = pos, "value"
        else:
            return None
    if expect != "end" or raw[pos:].strip() or deepest > MAX_JSON_DEPTH:
        return None
    return members


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
        return json_bytes(obj, default=str)
    except (TypeError, orjson.JSONEncodeError):  # nested deeper than orjson writes
        return orjson.dumps(f"<a JSON {type(obj).__name__} nested too deeply to show>")


class JsonText:
    """A JSON value kept as its text until it is written (`json_bytes` writes it as it is):
    far smaller than the parsed value. Equal when the texts are, so a transform stays pure."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"JsonText({self.text!r})"


def json_bytes(obj: Any, *, option: int = 0, default: Any = None) -> bytes:
    """JSON bytes of a value parsed by `load_json`, numbers with the digits they were read with
    (`Decimal` and integers beyond 64 bits written as their exact text). Raises TypeError for a
    value JSON cannot hold (unless `default` turns it into one)."""

    def exact(value: Any) -> Any:
        if isinstance(value, Decimal):
            return orjson.Fragment(str(value))
        if isinstance(value, JsonText):
            return orjson.Fragment(value.text)
        if default is not None:
            return default(value)
        raise TypeError(type(value).__name__)

    option |= orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(obj, option=option, default=exact)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return orjson.dumps(_big_ints_as_text(obj), option=option, default=exact)


def _big_ints_as_text(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _big_ints_as_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_big_ints_as_text(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return orjson.Fragment(str(obj))
    return obj


def handle(raw: Any, *, what: str = "handle") -> str:
    """Normalise a handle (trim, strip one leading @, lowercase, - → _) or reject it."""
    if not isinstance(raw, str):
        raise Bad("invalid_handle", f"{what} is {type(raw).__name__}, expected text")
    h = normal_handle(raw)
    if h is None:
        raise Bad("invalid_handle", f"{what} {raw!r} is not a valid handle after normalising")
    return h


@lru_cache(maxsize=20_000)  # a store names the same few thousand handles over and over
def normal_handle(raw: str) -> str | None:
    """`handle` of text, or None where `handle` would reject it (cached)."""
    h = raw.strip()
    if h.startswith("@"):
        h = h[1:]
    h = h.lower().replace("-", "_")
    return h if _HANDLE_RE.match(h) else None


def optional_handle(raw: Any, *, what: str = "handle") -> str | None:
    """Like `handle`, but None, "", and "null" mean no handle."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return None
    return handle(raw, what=what)


def timestamp(raw: Any, *, what: str = "timestamp") -> datetime:
    """Parse an epoch (ms, or s when < 1e11) or ISO 8601 value to an aware UTC datetime, exactly
    (an epoch is rounded to the microsecond, half to even, never through a float)."""
    if isinstance(raw, bool) or raw is None:
        raise Bad("bad_timestamp", f"{what} is {raw!r}, expected a time")
    if isinstance(raw, str):
        s = raw.strip()
        if s[4:5] == "-" or not _DECIMAL_TEXT.fullmatch(s):  # a date's dash: no number (most times)
            return _in_range(_iso(s, raw, what), raw, what)
        number: Decimal = Decimal(s)
    elif isinstance(raw, (int, Decimal)):
        number = Decimal(raw)
    elif isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise Bad("bad_timestamp", f"{what} {raw!r} is not a number")
        number = Decimal(repr(raw))
    else:
        raise Bad("bad_timestamp", f"{what} is {type(raw).__name__}, expected a time")
    if not number.is_finite():
        raise Bad("bad_timestamp", f"{what} {raw!r} is not a number")
    seconds = number / 1000 if abs(number) >= Decimal("1e11") else number
    if not _MIN_S <= seconds < _MAX_S:
        raise Bad("bad_timestamp", f"{what} {raw!r} is outside 2000..2100")
    micros = int((seconds * 1_000_000).to_integral_value(ROUND_HALF_EVEN))
    return _in_range(_EPOCH + timedelta(microseconds=micros), raw, what)


def _iso(s: str, raw: Any, what: str) -> datetime:
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise Bad("bad_timestamp", f"{what} {raw!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt if dt.tzinfo is timezone.utc else dt.astimezone(timezone.utc)


def _in_range(dt: datetime, raw: Any, what: str) -> datetime:
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
    if isinstance(raw, str) and len(raw.strip()) == 10 and not _INTEGER_TEXT.fullmatch(raw.strip()):  # epoch s
        try:
            d = date.fromisoformat(raw.strip())
        except ValueError:
            raise Bad("bad_timestamp", f"{what} {raw!r} is not a YYYY-MM-DD date") from None
        if not 2000 <= d.year < 2100:
            raise Bad("bad_timestamp", f"{what} {raw!r} is outside 2000..2100")
        return d
    return timestamp(raw, what=what).date()


def integer(raw: Any, *, what: str = "number", default: int | None = 0) -> int | None:
    """Parse a whole number exactly: an int, a number with no fraction (3.0), or text of ASCII
    digits with an optional leading `-` ("3"); None/""/"null" → default. Anything else is
    `wrong_type` (never Python's lenient int()/float(): "1_0", "٣", " 3", "3.0" are refused)."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null")):
        return default
    if isinstance(raw, bool):
        raise Bad("wrong_type", f"{what} is a boolean, expected a number")
    if isinstance(raw, str):
        if not _INTEGER_TEXT.fullmatch(raw):
            raise Bad("wrong_type", f"{what} {raw!r} is not a whole number in ASCII digits")
        n = int(raw)
    elif isinstance(raw, int):
        n = raw
    elif isinstance(raw, (float, Decimal)):
        try:
            whole = raw == int(raw)
        except (OverflowError, ValueError, InvalidOperation):  # inf, nan
            whole = False
        if not whole:
            raise Bad("wrong_type", f"{what} {raw!r} is not a whole number")
        n = int(raw)
    else:
        raise Bad("wrong_type", f"{what} is {type(raw).__name__}, expected a number")
    if not -(2**31) <= n < 2**31:
        raise Bad("out_of_range", f"{what} {raw!r} does not fit a 32-bit integer")
    return n


def boolean(raw: Any, *, what: str = "flag") -> bool:
    """Parse a boolean from true/false, "true"/"false", 1/0, "1"/"0"; None → False."""
    if raw is None:
        return False
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float, Decimal)) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "", "null"):
        return raw.strip().lower() in ("true", "1")
    raise Bad("wrong_type", f"{what} {raw!r} is not a boolean")


def set_members(raw: Any, *, what: str = "member") -> list[tuple[str, str | Bad, bytes]]:
    """A set's members as (label `[member]`, handle or the Bad that rejects it, raw bytes)."""
    if not isinstance(raw, list):
        raise Bad("wrong_type", f"value is {type(raw).__name__}, expected a set")
    out: list[tuple[str, str | Bad, bytes]] = []
    for member in raw:
        data = member if isinstance(member, bytes) else str(member).encode()
        label = f"[{data.decode('utf-8', 'replace')}]"
        try:
            out.append((label, handle(text(data, what=what), what=what), data))
        except Bad as exc:
            out.append((label, exc, data))
    return out


def hash_text(raw: dict[bytes, bytes], *, what: str = "hash") -> dict[str, str]:
    """Decode a Redis hash (bytes → bytes) to str → str with the `text` checks on each part."""
    return {text(k, what=f"{what} field"): text(v, what=f"{what} field {k!r}") for k, v in raw.items()}


def unjson(value: str) -> Any:
    """Un-stringify a hash field as the app's client does, where that loses nothing.

    `@upstash/redis` JSON-parses each reply but keeps the text when the result is a number that
    does not print back as the same text (and its HGETALL keeps every number that is not a safe
    integer as text). So: JSON text ("null", "true", an object, a quoted string) becomes its
    value; a number only when it is a canonical integer within ±(2**53 - 1) ("3", "-12"), where
    both rules agree; any other number text ("1.50", "1.5", "-0", "1e3", "007",
    "123456789012345678901234") and anything that is not JSON ("1_0", "٣") stay as written."""
    if _SAFE_INTEGER_TEXT.fullmatch(value):
        n = int(value)
        if abs(n) <= _MAX_SAFE_INTEGER:
            return n
        return value
    s = value.strip(" \t\n\r")  # JSON's own whitespace
    if s in ("null", "true", "false") or (s[:1] in "[{\"" and s):
        try:
            parsed = load_json(s)
        except Bad:
            return value
        return value if isinstance(parsed, (int, float, Decimal)) and not isinstance(parsed, bool) else parsed
    return value
