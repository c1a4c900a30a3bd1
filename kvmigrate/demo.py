"""`kvmigrate demo`: the migration on embedded servers, with nothing to install.

Today it runs the phases that exist (setup, doctor) against embedded Postgres and Valkey.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmigrate import commands
from kvmigrate.config import Config
from kvmigrate.doctor import DoctorResult
from kvmigrate.embedded import embedded_servers
from kvmigrate.pg.migrations import SetupResult


@dataclass(frozen=True)
class DemoResult:
    setup: SetupResult
    doctor: DoctorResult
    steps_not_built: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.doctor.ok


def run_demo(config: Config) -> DemoResult:
    """Start embedded servers (unless URLs are given), run setup and doctor, stop the servers."""
    if config.pg_url and config.kv_url:
        return _phases(config)
    with embedded_servers() as servers:
        return _phases(config.model_copy(update={"pg_url": servers.pg_url, "kv_url": servers.kv_url}))


def _phases(config: Config) -> DemoResult:
    setup = commands.setup(config)
    doctor = commands.doctor(config)
    return DemoResult(setup, doctor, ("seed", "backfill", "verify", "cutover", "cleanup"))
