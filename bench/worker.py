"""Run one measured operation in its own process and print its result as one JSON line.

    python bench/worker.py backfill '{"pg_url": ..., "kv_url": ..., "keys": 200000}'

The result carries `peak_rss_mb`: this process's peak resident set size, so every figure is the
operation's own (interpreter and imports included).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from backfill import measure_backfill
from handloader import hand_loader
from harness import peak_rss_mb
from limits import naive_loop, read_limit, upsert_limit
from verify import measure_verify

OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "backfill": measure_backfill,
    "verify": measure_verify,
    "read_limit": read_limit,
    "upsert_limit": upsert_limit,
    "naive": naive_loop,
    "hand_loader": hand_loader,
}


def main(argv: list[str]) -> int:
    op, args = argv[1], json.loads(argv[2])
    result = OPERATIONS[op](**args)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
