"""Hide passwords and tokens before anything is printed, logged or stored.

A URL's user info is taken to run from `scheme://` to the *last* '@' of the URL (of the
whitespace-free run in free text), whatever it holds: a password with an unencoded '/', '?',
'#' or '@' is still hidden whole, even though no URL parser reads it that way. Hiding too
much is harmless; showing a piece of a password is not.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_MASK = "***"
_SCHEME = r"[a-z][a-z0-9+.-]*://"
_URL_RE = re.compile(rf"\b({_SCHEME})(\S*)@", re.IGNORECASE)
_QUERY_SECRET_RE = re.compile(r"((?:password|passwd|token|secret|api_key|apikey)=)[^&\s]+", re.IGNORECASE)
_LONE_USER_IS_SECRET = ("redis", "rediss", "valkey", "valkeys", "unix")


def _masked_userinfo(scheme: str, userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{user}:{_MASK}"
    if user and scheme.lower().rstrip(":/") in _LONE_USER_IS_SECRET:
        return _MASK  # redis://token@host: a lone user info is the password for Redis URLs
    return user


def mask_url(url: str) -> str:
    """Return `url` with its password (and any token-like query value) replaced by ***; its
    user info runs to the last '@', and a string with no scheme is read the same way."""
    m = re.match(_SCHEME, url, re.IGNORECASE)
    scheme, rest = (m.group(0), url[m.end():]) if m else ("", url)
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        masked = _masked_userinfo(scheme, userinfo) if scheme else (
            f"{userinfo.partition(':')[0]}:{_MASK}" if ":" in userinfo else _MASK)
        rest = f"{masked}@{host}"
    return mask_text(scheme + rest)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask every URL password in free text, plus any of the given literal secrets."""
    out = _URL_RE.sub(lambda m: f"{m.group(1)}{_masked_userinfo(m.group(1), m.group(2))}@", text)
    out = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + _MASK, out)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and len(secret) >= 3:
            out = out.replace(secret, _MASK)
    return out


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secret parts of a URL (password, token-like query values), for literal masking.

    Works on strings that do not parse too: the password as written and decoded, read up to
    the first and up to the last '@', and the pieces a parser would make of it when it holds
    an unencoded '/', '?', '#', '@' or ':' (one may become a "host" or "dbname" in a driver's
    error message)."""
    if not url:
        return ()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    found: list[str] = []
    if "@" in rest:
        for userinfo in {rest[:rest.find("@")], rest[:rest.rfind("@")]}:
            user, colon, password = userinfo.partition(":")
            secret = password if colon else user if scheme.lower() in _LONE_USER_IS_SECRET else ""
            if secret:
                found += [secret, unquote(secret, errors="replace")]
                found += [p for p in re.split(r"[/?#@:]", secret) if len(p) >= 4]
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET_RE.finditer(rest)]
    return tuple(dict.fromkeys(s for s in found if s))
