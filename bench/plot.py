"""Draw docs/benchmarks.png from bench/results/bench-*.json: keys/s and peak RSS by key count.

    python bench/plot.py

Left: backfill, no-change rerun and verify keys/s with the three limits measured in the same
runs. Right: peak RSS of each command. One point per result file (one per size).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness import DOCS_DIR, RESULTS_DIR

SERIES = (
    ("backfill", "backfill (fresh)", "-", "o"),
    ("rerun", "no-change rerun", "-", "s"),
    ("verify", "full verify", "-", "^"),
    ("upsert_limit", "limit: COPY-to-stage+upsert", ":", "x"),
    ("naive", "limit: naive GET+INSERT loop", ":", "v"),
)


def load() -> list[dict[str, Any]]:
    """Every result file, smallest keyspace first."""
    runs = [json.loads(p.read_text()) for p in RESULTS_DIR.glob("bench-*.json")]
    return sorted(runs, key=lambda r: r["keys"])


def plot(out: Path = DOCS_DIR / "benchmarks.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load()
    keys = [r["keys"] / 1000 for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, label, style, marker in SERIES:
        left.plot(keys, [r[name]["keys_per_s"] for r in runs], style, marker=marker, label=label)
    left.set_yscale("log")
    left.set_xlabel("keys in the store (thousands)")
    left.set_ylabel("keys per second (log)")
    left.set_title("throughput")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    for name, label, marker in (("backfill", "backfill", "o"), ("rerun", "rerun", "s"), ("verify", "verify", "^")):
        right.plot(keys, [r[name]["peak_rss_mb"] for r in runs], "-", marker=marker, label=label)
    right.axhline(150, color="grey", linestyle="--", linewidth=1, label="target 150 MB")
    right.set_ylim(0, max(200, *(r[n]["peak_rss_mb"] * 1.2 for r in runs for n in ("backfill", "verify"))))
    right.set_xlabel("keys in the store (thousands)")
    right.set_ylabel("peak RSS (MB)")
    right.set_title("memory of the kvmigrate process")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    machine = runs[-1]["machine"]
    fig.suptitle(f"kvmigrate on {machine['cores']} cores ({machine['cpu']}), embedded "
                 f"{machine['postgres'].split(' (')[0]} and {machine['kv'].split(' (')[0]}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot())
    sys.exit(0)
