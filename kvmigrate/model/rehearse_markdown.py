"""The Markdown summary of a rehearse (for a CI job summary or a PR comment), rendered from the JSON
envelope itself, so the two reports cannot disagree. It holds counts, reason codes, key names and
patterns, never a KV value. A pure function of the envelope: no I/O."""

from __future__ import annotations

from typing import Any

FORECAST_NOTE = ("an estimate: backfill and verify as measured here; archive = a SCAN and one read script "
                 "per page; delete = one script per page of deletable keys")
DATA_COLUMNS = ("entity", "scanned", "migrated", "rejected", "item rejects", "rows written", "rows checked",
                "missing", "extra", "different", "repaired")
COST_ROWS = (
    ("backfill", "backfill (measured)"),
    ("verify", "verify (measured)"),
    ("archive", "archive (estimate)"),
    ("delete", "delete (estimate)"),
    ("real_run", "real run (estimate)"),
    ("backfill_predicted", "backfill as predicted by inventory"),
    ("rehearse", "this rehearse (inventory + backfill + verify; shadow's own count is in its section)"),
)


def to_markdown(envelope: dict[str, Any]) -> str:
    """The Markdown summary of a rehearse envelope (the dict written as the JSON report)."""
    head = f"## kvmigrate rehearse: {_verdict(envelope)}\n"
    result = envelope.get("result")
    if result is None:
        error = envelope.get("error") or {}
        lines = [head, f"**error:** {_esc(error.get('message', ''))}"]
        if error.get("hint"):
            lines.append(f"\n**hint:** {_esc(error['hint'])}")
        return "\n".join(lines) + "\n" + _footer(envelope)
    parts = [head, _checks(result), _data(result), _rejects(result), _unknown(result), _cost(result), _footer(envelope)]
    return "\n".join(p for p in parts if p)


def _verdict(envelope: dict[str, Any]) -> str:
    if envelope.get("error"):
        return f"ERROR (exit {envelope['exit_code']})"
    return "PASSED" if envelope["ok"] else f"FAILED (exit {envelope['exit_code']})"


def _checks(result: dict[str, Any]) -> str:
    rows = [(f"`{_code(c['name'])}`", "✅ pass" if c["ok"] else f"❌ FAIL (exit {c['exit_code']})",
             _esc(c["detail"])) for c in result["checks"]]
    return _table(("check", "result", "detail"), rows, escape=())


def _data(result: dict[str, Any]) -> str:
    verify = result["verify"]["entities"]
    rows = []
    for name, t in result["backfill"]["entities"].items():
        v = verify.get(name)
        checks = ("", "", "", "", "") if v is None else (
            v["checked"], len(v["missing"]), len(v["extra"]), len(v["different"]), v["repaired"])
        rows.append((name, t["scanned"], t["migrated"], t["rejected"], t["item_rejects"], t["rows_written"], *checks))
    return "### Data\n\n" + _table(DATA_COLUMNS, rows) + _examples(verify)


def _examples(verify: dict[str, Any], limit: int = 5) -> str:
    """A few differences per entity: table, primary key, source key and field names (no values)."""
    lines = []
    for name, v in verify.items():
        for kind in ("missing", "extra", "different"):
            for d in v[kind][:limit]:
                fields = f" ({', '.join(d['fields'])})" if d.get("fields") else ""
                lines.append(f"- {kind}: {_esc(name)} `{_code(d['table'])}.{_code(d['pk'])}` from "
                             f"`{_code(d['key'] or 'no KV key')}`{_esc(fields)}")
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def _rejects(result: dict[str, Any]) -> str:
    if not result["rejects"]:
        return ""
    rows = [(_esc(g["entity"]), f"`{_code(g['reason'])}`", g["count"], f"`{_code(g['example_key'])}`")
            for g in result["rejects"]]
    return "### Rejects\n\n" + _table(("entity", "reason", "count", "example key"), rows, escape=())


def _unknown(result: dict[str, Any]) -> str:
    patterns = result["backfill"]["unknown_patterns"]
    if not patterns:
        return ""
    rows = [(f"`{_code(p)}`", info["keys"], f"`{_code(info['example'])}`") for p, info in patterns.items()]
    return ("### Unknown key patterns (left in KV, not migrated)\n\n"
            + _table(("pattern", "keys", "example"), rows, escape=()))


def _cost(result: dict[str, Any]) -> str:
    cost = result["kv_requests"]
    rows = [(label, cost[key]) for key, label in COST_ROWS]
    return "### KV requests\n\n" + _table(("", "requests"), rows) + f"\nThe real run is {_esc(cost['note'])}.\n"


def _footer(envelope: dict[str, Any]) -> str:
    return (f"\n<sub>kvmigrate {_esc(envelope['version'])}, started {envelope['started_at']}, "
            f"finished {envelope['finished_at']}</sub>\n")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]], *, escape: tuple[int, ...] | None = None) -> str:
    """A Markdown table; cells are escaped unless their column index is left out of `escape`."""
    def cell(i: int, value: Any) -> str:
        text = str(value)
        return _esc(text) if escape is None or i in escape else text

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(i, v) for i, v in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_MD_SPECIAL = "\\`*_[]<>|#"


def _esc(text: str) -> str:
    """Escape text so Markdown shows it literally (and it cannot break a table row)."""
    out = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    return " ".join(out.splitlines())


def _code(text: str) -> str:
    """Text for inside a `code span` in a table: no backtick, no pipe, no newline."""
    return " ".join(text.replace("`", "'").replace("|", "\\|").splitlines())
