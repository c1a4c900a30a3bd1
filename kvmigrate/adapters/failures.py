"""Tell a connection failure that waiting cures from one that it never will.

A serverless database waking up refuses or times out for a few seconds: that is retried. A
wrong password, a host that does not exist, a missing database or a TLS mismatch fail the same
way on every attempt: they are reported at once, each with its own hint. Pure functions, apart
from `kv_speaks_plain`, which opens one TCP connection and sends one PING (not billed).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Permanent:
    """Why a connection can never succeed as configured, and what to change."""

    reason: str
    hint: str


_PG_AUTH = Permanent("authentication failed", "check the user name and password in the URL (percent-encode "
                     "special characters); on Neon copy the URL again from the dashboard's Connect dialog")
_PG_HOST = Permanent("the host name does not resolve", "check the host in the URL (on Neon, the endpoint "
                     "ep-…-….neon.tech from the dashboard; a deleted branch's host no longer exists)")
_PG_NODB = Permanent("the database does not exist", "fix the database name at the end of the URL, or create it "
                     "(CREATE DATABASE name; on Neon, Databases → New database)")
_PG_TLS = Permanent("TLS mismatch: the server does not offer TLS (SSL) but the URL requires it",
                    "drop sslmode=require (or verify-*) from the URL for this server, or use its TLS endpoint")
_PG_TLS_REQUIRED = Permanent("the server requires TLS (SSL) and the URL turned it off",
                             "remove sslmode=disable from the URL (Neon needs sslmode=require)")

_PG_RULES: tuple[tuple[str, Permanent], ...] = (
    (r"password authentication failed|no password supplied|authentication failed|role \S+ does not exist|"
     r"pg_hba\.conf rejects|password is required", _PG_AUTH),
    (r"could not translate host name|failed to resolve host|Name or service not known|nodename nor servname", _PG_HOST),
    (r"database \S+ does not exist", _PG_NODB),
    (r"server does not support SSL|SSL was required", _PG_TLS),
    (r"SSL required|connection requires SSL|must use SSL|SSL/TLS required", _PG_TLS_REQUIRED),
)
_PG_SQLSTATE = {"28P01": _PG_AUTH, "28000": _PG_AUTH, "3D000": _PG_NODB}


def pg_permanent(exc: BaseException) -> Permanent | None:
    """The permanent reason behind a failed Postgres connect, or None when a retry may help
    (refused, timed out, the server starting up or out of connection slots)."""
    state = getattr(exc, "sqlstate", None)
    if state in _PG_SQLSTATE:
        return _PG_SQLSTATE[state]
    text = str(exc)
    for pattern, permanent in _PG_RULES:
        if re.search(pattern, text, re.IGNORECASE):
            return permanent
    return None


_KV_AUTH = Permanent("authentication failed", "check the password (the token) in the URL; on Vercel KV_URL "
                     "or REDIS_URL, on Upstash the console's rediss:// URL, carry it as default:TOKEN@")
_KV_HOST = Permanent("the host name does not resolve", "check the host in the URL (Upstash: …upstash.io from the "
                     "console's Connect panel)")
KV_TLS_MISMATCH = Permanent("TLS mismatch: the URL is rediss:// but the server speaks plain Redis",
                    "use redis:// for this server (rediss:// is for TLS endpoints such as Upstash and Vercel KV)")
_KV_TLS_HANDSHAKE = Permanent("TLS handshake failed", "use rediss:// only for TLS endpoints (Upstash, Vercel KV), "
                              "redis:// for a plain server; a certificate error means the host name is not the "
                              "one the certificate names")


def kv_permanent(exc: BaseException, *, tls: bool) -> Permanent | None:
    """The permanent reason behind a failed KV connect, or None when a retry may help."""
    import redis

    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or re.search(
            r"WRONGPASS|NOAUTH|invalid username-password|invalid password|AUTH\b.*without any password", text):
        return _KV_AUTH
    if re.search(r"Name or service not known|nodename nor servname|Errno -2\b|Errno -5\b|No address associated",
                 text):
        return _KV_HOST
    if tls and re.search(r"SSL|TLS|certificate|wrong version number", text, re.IGNORECASE):
        return _KV_TLS_HANDSHAKE
    return None


def kv_speaks_plain(host: str, port: int, *, timeout: float = 3.0) -> bool:
    """True when the server at host:port answers a plain-text PING (so it does not speak TLS).
    Opens one TCP connection and sends PING (free: not a billed command)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply[:1] in (b"+", b"-")  # +PONG, or -NOAUTH / -ERR: a RESP reply, in clear text
