"""Names that are not text, made printable: every JSON and human rendering, and every result
stored in Postgres, shows a KV name the way the ledger stores it (`kv.scanner.storable_name`).

A key read from KV keeps bytes that are not UTF-8 as surrogate escapes (U+DC80..U+DCFF, so it
round-trips), and may hold NUL; neither can be encoded as UTF-8 JSON, printed safely, or stored
in Postgres text. Such a byte is shown as `\\xNN` (and NUL as `\\x00`); any other lone surrogate
as `\\uNNNN`. Text without them is returned unchanged (the same object).
"""

from __future__ import annotations

import re
from typing import Any

_UNPRINTABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "\\x00" if code == 0 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with undecodable bytes and NUL as `\\xNN` escapes."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def printable_tree(obj: Any) -> Any:
    """A JSON-ready value (dicts, lists, strings, numbers) with every string, keys included,
    made `printable`. Other values pass through."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable_tree(k): printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable_tree(v) for v in obj]
    return obj
