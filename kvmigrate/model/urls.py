"""Check connection URLs with the drivers' own parsers before anything connects or prints them.

A URL that does not parse the way the driver will read it is refused with ConfigError (exit 2)
whose message names only the scheme: a parser's own complaint usually quotes the string, and a
password holding an unencoded '/', '@' or '#' makes the "host" or "port" part of the secret, so
neither the string nor any piece of it is shown. Both checks are pure (no I/O).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

from kvmigrate.model.errors import ConfigError

PG_SCHEMES = ("postgresql", "postgres")
KV_SCHEMES = ("redis", "rediss", "valkey", "valkeys", "unix")
REST_SCHEMES = ("https", "http")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,30})://")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_ENCODE_HINT = "percent-encode '/', '?', '#', '@', ':' and '%' in the user name and password (e.g. '/' as %2F)"


def scheme_of(url: str) -> str | None:
    """The URL's scheme in lower case, or None when it has none (`user:pw@host` has none)."""
    m = _SCHEME_RE.match(url.strip())
    return m.group(1).lower() if m else None


def shown(url: str) -> str:
    """How a URL that does not parse is named: its scheme, or nothing."""
    scheme = scheme_of(url)
    return f"{scheme}://…" if scheme else "a string with no scheme"


def _bad(what: str, url: str, why: str, hint: str) -> ConfigError:
    return ConfigError(f"bad {what} URL ({shown(url)}, not shown): {why}", hint=hint)


def clean_pg_url(url: str) -> str:
    """Drop query parameters libpq does not know (Prisma's `pgbouncer`, `connection_limit`).
    The others stay byte for byte: libpq decodes %XX but reads `+` literally, so decoding and
    re-encoding them (`options=-c%20statement_timeout%3D5000`, a password with `+`) breaks them."""
    parts = urlsplit(url)
    pairs = [p for p in parts.query.split("&") if p]
    kept = [p for p in pairs if unquote(p.split("=", 1)[0]) not in {"pgbouncer", "connection_limit"}]
    if len(kept) == len(pairs):
        return url
    return urlunsplit(parts._replace(query="&".join(kept)))  # the others exactly as written


def check_pg_url(url: str) -> dict[str, str]:
    """Parse a Postgres URL as libpq will (psycopg.conninfo) and return its parts; ConfigError
    when it is not a postgresql:// URL libpq reads as written."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    hint = f"a Postgres URL looks like postgresql://user:password@host:5432/dbname; {_ENCODE_HINT}"
    scheme = scheme_of(url)
    if scheme not in PG_SCHEMES:
        raise _bad("Postgres", url, "it does not start with postgresql:// (or postgres://)", hint)
    if re.search(r"\s", url.strip()):
        raise _bad("Postgres", url, "it holds a space or another blank", hint)
    try:
        parts = {k: str(v) for k, v in conninfo_to_dict(clean_pg_url(url.strip())).items()}
    except UnicodeDecodeError:
        raise _bad("Postgres", url, "a %XX escape does not decode to UTF-8 text", hint) from None
    except (ProgrammingError, ValueError):
        raise _bad("Postgres", url, "libpq cannot parse it", hint) from None
    for port in filter(None, parts.get("port", "").split(",")):
        if not _PORT_RE.match(port) or not 0 < int(port) < 65536:
            raise _bad("Postgres", url, "the port is not a number from 1 to 65535 (an unencoded '/' in the "
                       "password cuts the URL short there)", hint)
    if "@" in parts.get("host", "") or "@" in parts.get("dbname", ""):
        raise _bad("Postgres", url, "it holds more than one '@' where libpq expects one", hint)
    return parts


def check_kv_url(url: str) -> str:
    """Parse a KV URL as redis-py will and return its scheme; ConfigError when it does not
    parse, names no host, or would be read differently than written. An https:// URL is an
    Upstash REST endpoint, which kvmigrate cannot use: the message says which URL to use."""
    import redis.connection

    hint = f"a KV URL looks like rediss://default:token@host:6379 (redis:// without TLS); {_ENCODE_HINT}"
    scheme = scheme_of(url)
    if scheme in REST_SCHEMES:
        raise ConfigError(f"the KV URL is an HTTP REST endpoint ({scheme}://…): kvmigrate speaks the Redis "
                          "protocol and needs the store's rediss:// URL", hint=REST_HINT)
    if scheme not in KV_SCHEMES:
        raise _bad("KV", url, "it does not start with redis://, rediss:// or unix://", hint)
    real = url.strip()
    for alias, wire in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if real.lower().startswith(alias):
            real = wire + real[len(alias):]
    rest = real.split("://", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in rest[len(authority):] or "#" in rest:
        raise _bad("KV", url, "a '/', '?', '#' or '@' in it is not percent-encoded", hint)
    try:
        unquote(authority, errors="strict")
        parts = redis.connection.parse_url(real)
    except (ValueError, UnicodeDecodeError):
        raise _bad("KV", url, "redis-py cannot parse it", hint) from None
    if scheme != "unix" and not parts.get("host"):
        raise _bad("KV", url, "it names no host", hint)
    return scheme


REST_HINT = ("use the TCP URL instead: on Vercel it is KV_URL or REDIS_URL (Storage → your store → .env.local "
             "tab, or `vercel env pull`); on Upstash, the console's database page → Connect → the rediss:// "
             "URL (not the REST URL and token)")


#: `--schema NAME`: a plain lower-case identifier, so it needs no quoting in SQL or in libpq's options
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_SCHEMAS = frozenset({"kvmigrate", "information_schema"})


def check_schema_name(name: str) -> str:
    """The app schema name, or ConfigError (exit 2) for one that needs quoting or is reserved. Pure."""
    if not SCHEMA_RE.match(name) or name in RESERVED_SCHEMAS or name.startswith("pg_"):
        raise ConfigError(f"bad schema name {name[:70]!r}: it must be a lower-case identifier (a-z, 0-9, _), "
                          "not kvmigrate, information_schema or pg_*",
                          hint="pass --schema NAME (or KVMIGRATE_PG_SCHEMA), e.g. --schema vibe")
    return name


def with_search_path(url: str, schema: str) -> str:
    """The Postgres URL with `-c search_path=SCHEMA` added to its libpq `options` parameter (an
    `options` already there is kept, before it), so every connection resolves the app's tables
    in SCHEMA. Other parameters stay byte for byte. Pure."""
    from urllib.parse import quote

    parts = urlsplit(url)
    pairs = [p for p in parts.query.split("&") if p]
    found = [unquote(p.split("=", 1)[1]) for p in pairs if unquote(p.split("=", 1)[0]) == "options" and "=" in p]
    rest = [p for p in pairs if unquote(p.split("=", 1)[0]) != "options"]
    options = " ".join([*found, f"-c search_path={check_schema_name(schema)}"])
    return urlunsplit(parts._replace(query="&".join([*rest, "options=" + quote(options, safe="")])))
