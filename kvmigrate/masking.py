"""Hide passwords and tokens before anything is printed, logged or stored."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_MASK = "***"
_URL_RE = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/@:]*)(:[^\s/@]*)?@", re.IGNORECASE)
_QUERY_SECRET_RE = re.compile(r"((?:password|token|secret|api_key|apikey)=)[^&\s]+", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return `url` with its password (and any token-like query value) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        if ":" in userinfo:
            netloc = f"{user}:{_MASK}@{host}"
        elif user and parts.scheme.startswith(("redis", "rediss", "valkey")):
            # redis://token@host: a lone userinfo is the password for Redis URLs.
            netloc = f"{_MASK}@{host}"
    query = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + _MASK, parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask every URL password in free text, plus any of the given literal secrets."""
    out = _URL_RE.sub(_mask_url_match, text)
    out = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + _MASK, out)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, _MASK)
    return out


def _mask_url_match(m: re.Match[str]) -> str:
    scheme, user, password = m.group(1), m.group(2), m.group(3)
    if password:
        return f"{scheme}{user}:{_MASK}@"
    if user and scheme.lower().startswith(("redis", "valkey")):
        return f"{scheme}{_MASK}@"
    return m.group(0)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secret parts of a URL (password, token-like query values), for literal masking."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    elif parts.username and parts.scheme.startswith(("redis", "valkey")):
        found.append(parts.username)
    for m in _QUERY_SECRET_RE.finditer(parts.query):
        found.append(m.group(0).split("=", 1)[1])
    return tuple(found)
