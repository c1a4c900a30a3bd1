"""One error hierarchy; each class carries the process exit code the CLI uses.

| exit | meaning |
|---|---|
| 0 | ok |
| 1 | differences found, a gate refused the step, or restore cannot put back everything deleted |
| 2 | bad usage or configuration |
| 3 | cannot connect to KV or Postgres |
| 4 | stopped by the request budget (resumable) |
| 5 | rejects present and `--strict` given |
"""

from __future__ import annotations

EXIT_OK = 0


class KvmigrateError(Exception):
    """Root of every error kvmigrate raises on purpose. `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class GateRefused(KvmigrateError):
    """A phase step was refused (out of order, or its verify is missing, stale or dirty)."""

    exit_code = 1


class StoreChanged(KvmigrateError):
    """The KV store is not the one earlier runs saw: it restarted empty, or lost most of its
    keys. Nothing more is written or deleted until someone looks."""

    exit_code = 1


class WrongStore(GateRefused):
    """No key of the store matches an entity kvmigrate was asked to migrate, or a gate found
    only a verify that checked 0 rows: most likely another app's store or database."""

    exit_code = 1


class SchemaConflict(KvmigrateError):
    """Tables, indexes or types that the schema would create already exist and are not
    kvmigrate's (another app's `users`): setup refuses before applying anything."""

    exit_code = 2


class ArchiveBusy(KvmigrateError):
    """Another cleanup or restore holds the archive folder's lock."""

    exit_code = 1


class DifferencesFound(KvmigrateError):
    """verify found rows that differ between KV and Postgres."""

    exit_code = 1


class ConfigError(KvmigrateError):
    """Bad usage or configuration: a missing URL, an unknown entity, a bad option."""

    exit_code = 2


class StorageError(ConfigError):
    """A file or folder kvmigrate must write cannot be written (disk full, read-only, no
    permission): the path and the OS's reason, and a hint to free space or choose another place."""


class ConnectError(KvmigrateError):
    """A server could not be reached (after the bounded retries)."""

    exit_code = 3


class BudgetExhausted(KvmigrateError):
    """The KV request cap was reached; the run stopped cleanly and resumes next time."""

    exit_code = 4


class BudgetTooSmall(ConfigError):
    """The KV request cap is below what one checkpointed step costs: a rerun with the same cap
    would stop at the same place, so this is a bad setting, not a resumable stop."""


class RejectsPresent(KvmigrateError):
    """Rejected records exist and `--strict` was given."""

    exit_code = 5


#: The documented exit codes; the README table is tested against this mapping.
EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "differences found, a gate refused the step (no key of the KV store matching an entity included: "
       "\"is this the right store and database?\"), or restore cannot put back everything deleted",
    2: "bad usage or configuration (a schema conflict included: setup would create a table that exists)",
    3: "cannot connect to KV or Postgres",
    4: "stopped by the request budget (resumable: run the same command again)",
    5: "rejects present and --strict given",
}
