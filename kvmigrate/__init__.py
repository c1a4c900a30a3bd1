"""kvmigrate: move an app's data from a Redis-compatible KV store to Postgres, safely."""

from __future__ import annotations

__version__ = "0.1.0"
