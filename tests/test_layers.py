"""The library stands without its faces: a backfill and a verify run through `kvmigrate.api`
persist their results in their JSON form (the one `--json` prints) without importing the
renderers (`kvmigrate.report`) or the CLI. The import direction itself is checked by
import-linter in `make lint`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg

SCRIPT = """
import json, sys
from pathlib import Path
from kvmigrate import api
from kvmigrate.model.config import build_config
config = build_config(pg_url=sys.argv[1], kv_url=sys.argv[2], env={})
api.setup(config)
api.backfill(config, entities=["memories"], memories_dir=Path(sys.argv[3]))
api.verify(config, entities=["memories"], memories_dir=Path(sys.argv[3]), recheck_delay=0)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("kvmigrate.report", "kvmigrate.cli")))))
"""


def test_library_persists_results_without_importing_the_renderers(pg_url: str, kv_url: str,
                                                                   tmp_path: Path) -> None:
    line = {"id": "mk01abcd", "timestamp": "2026-01-02T10:00:00Z", "observation": "Ships on Fridays",
            "from": "seth", "about": "alice"}
    (tmp_path / "thread_alice.jsonl").write_bytes(orjson.dumps(line) + b"\n")

    done = subprocess.run([sys.executable, "-c", SCRIPT, pg_url, kv_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    with psycopg.connect(pg_url) as conn:
        results = dict(conn.execute("SELECT command, result FROM kvmigrate.runs"
                                    " WHERE command IN ('backfill', 'verify')").fetchall())
    # the JSON forms, not the dataclasses' default fields
    assert results["backfill"]["entities"]["memories"]["migrated"] == 1
    assert "resumed_from_cursor" in results["backfill"] and "tallies" not in results["backfill"]
    assert results["verify"]["clean"] is True and "confidence" in results["verify"]
