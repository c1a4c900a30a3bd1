"""Configuration: where the servers are and how hard kvmigrate may push them.

URLs come from options, else from the environment, in the order documented in the README.
Secrets never leave this object unmasked: `repr`, `str` and `describe()` all mask them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmigrate.model.errors import ConfigError
from kvmigrate.model.masking import mask_text, mask_url, url_secrets
from kvmigrate.model.urls import (
    REST_HINT,
    check_kv_url,
    check_pg_url,
    check_schema_name,
    shown,
    with_search_path,
)

KV_URL_VARS = ("KVMIGRATE_KV_URL", "KV_URL", "REDIS_URL")
#: HTTPS REST endpoints (Vercel's Upstash integration, Upstash itself): recognised, not usable
KV_REST_VARS = ("KV_REST_API_URL", "UPSTASH_REDIS_REST_URL")
#: read from the working directory when present; the environment wins, then .env.local
DOTENV_FILES = (".env.local", ".env")
PG_URL_VARS = (
    "KVMIGRATE_PG_URL",
    "DATABASE_URL_UNPOOLED",
    "POSTGRES_URL_NON_POOLING",
    "DATABASE_URL",
    "POSTGRES_URL",
)


class Config(BaseModel):
    """Everything a command needs to reach the servers; immutable once built."""

    model_config = ConfigDict(frozen=True)

    kv_url: str | None = None
    pg_url: str | None = None
    #: the REST variable found when no KV URL was (KV_REST_API_URL, UPSTASH_REDIS_REST_URL)
    kv_rest_var: str | None = None
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    scan_count: int = Field(default=1000, ge=10, le=100_000)
    #: backfill: records loaded per Postgres transaction (consecutive SCAN pages are grouped).
    #: Each transaction pays a fixed number of statements per table; 10,000 against 5,000 loads
    #: 11-21% more keys a second for 11-20 MB more peak memory (docs/benchmarks.md)
    load_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    max_requests: int | None = Field(default=None, ge=1)
    daily_quota: int = Field(default=3000, ge=1)
    connect_retries: int = Field(default=5, ge=0, le=50)
    #: run even though KV holds fewer than half the keys earlier runs saw (see kvmigrate.guards)
    allow_shrunk_store: bool = False
    #: `verify --repair` replaces a row even when the new one holds less (see kvmigrate.engine.loss)
    allow_lossy_repair: bool = False
    #: the Postgres schema of the app's tables (`--schema`, KVMIGRATE_PG_SCHEMA); None: the
    #: server's search_path (normally `public`). kvmigrate's own state is always in `kvmigrate`.
    pg_schema: str | None = None

    def __repr__(self) -> str:
        return f"Config(kv_url={self.masked_kv_url!r}, pg_url={self.masked_pg_url!r})"

    __str__ = __repr__

    @property
    def masked_kv_url(self) -> str | None:
        return _masked(self.kv_url, check_kv_url)

    @property
    def masked_pg_url(self) -> str | None:
        return _masked(self.pg_url, check_pg_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Literal secrets to scrub from any text before it is shown."""
        return url_secrets(self.kv_url) + url_secrets(self.pg_url)

    def require_kv(self) -> str:
        """Return the KV URL or raise a ConfigError listing where it was looked for."""
        if not self.kv_url and self.kv_rest_var:
            token = self.kv_rest_var.replace("_URL", "_TOKEN")
            raise ConfigError(
                f"only {self.kv_rest_var}/{token} are set: that is the store's HTTPS REST API, and kvmigrate "
                "speaks the Redis protocol; it needs the store's rediss:// URL in KV_URL or REDIS_URL (or --kv-url)",
                hint=REST_HINT,
            )
        if not self.kv_url:
            raise ConfigError(
                "no KV URL: pass --kv-url or set one of " + ", ".join(KV_URL_VARS),
                hint="on Vercel, `vercel env pull` writes KV_URL into .env.local",
            )
        check_kv_url(self.kv_url)
        return self.kv_url

    def require_pg(self) -> str:
        """Return the Postgres URL or raise a ConfigError listing where it was looked for."""
        if not self.pg_url:
            raise ConfigError(
                "no Postgres URL: pass --pg-url or set one of " + ", ".join(PG_URL_VARS),
                hint="prefer the unpooled URL (DATABASE_URL_UNPOOLED) for migrations",
            )
        check_pg_url(self.pg_url)
        if self.pg_schema:  # every connection then resolves the app's tables in that schema
            return with_search_path(self.pg_url, self.pg_schema)
        return self.pg_url


def _masked(url: str | None, check: Callable[[str], object]) -> str | None:
    """The URL masked for display; a URL that does not parse shows only its scheme."""
    if not url:
        return None
    try:
        check(url)
    except ConfigError:
        return shown(url)
    return mask_url(url)


def first_env(names: tuple[str, ...], env: Mapping[str, str] | None = None) -> str | None:
    """Return the first non-empty value among the environment variables `names`."""
    source = os.environ if env is None else env
    for name in names:
        value = source.get(name, "").strip()
        if value:
            return value
    return None


def first_name(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The first of `names` set to a non-empty value in `env`."""
    return next((n for n in names if env.get(n, "").strip()), None)


def process_env(cwd: Path | None = None) -> dict[str, str]:
    """The environment, completed by `.env.local` and `.env` in the working directory (what
    `vercel env pull` writes): a variable set in the environment wins, then `.env.local`."""
    from dotenv import dotenv_values

    merged: dict[str, str] = {}
    for name in reversed(DOTENV_FILES):
        path = (cwd or Path.cwd()) / name
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update({k: v for k, v in os.environ.items() if v.strip()})
    return merged


def build_config(
    *,
    kv_url: str | None = None,
    pg_url: str | None = None,
    env: Mapping[str, str] | None = None,
    **options: object,
) -> Config:
    """Build a Config from explicit values, falling back to the environment for URLs (by
    default the process environment with `.env.local` and `.env`; `env` replaces all three)."""
    env = process_env() if env is None else env
    for var, name in (("KVMIGRATE_CONNECT_RETRIES", "connect_retries"), ("KVMIGRATE_DAILY_QUOTA", "daily_quota"),
                      ("KVMIGRATE_PG_SCHEMA", "pg_schema")):
        value = first_env((var,), env)
        if value is not None and options.get(name) is None:
            options[name] = value
    if isinstance(options.get("pg_schema"), str):
        check_schema_name(str(options["pg_schema"]))
    try:
        return Config(
            kv_url=kv_url or first_env(KV_URL_VARS, env),
            pg_url=pg_url or first_env(PG_URL_VARS, env),
            kv_rest_var=first_name(KV_REST_VARS, env),
            **{k: v for k, v in options.items() if v is not None},  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ConfigError(f"bad setting: {mask_text(problems)}",
                          hint="check the option or the KVMIGRATE_* environment variable it names") from None
