"""The library stands without its faces: a backfill and a verify run through `kvmigrate.api`
persist their results in their JSON form (the one `--json` prints) without importing the
renderers (`kvmigrate.report`) or the CLI. The import direction is checked by import-linter in
`make lint`; the tests below check what its contracts promise from the source itself (every
import a module runs, function-level ones included): no cycle, the faces reach the library
through api.py, and the library never imports its faces."""

from __future__ import annotations

import ast
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


# --- what the import-linter contracts promise, checked from the source itself ---------------

PACKAGE = Path(__file__).resolve().parents[1] / "kvmigrate"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import a module runs, function-level ones included (not those under TYPE_CHECKING)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def _graph() -> dict[str, set[str]]:
    """kvmigrate module -> the kvmigrate modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kvmigrate"


def test_no_import_cycle_among_modules_function_level_imports_included() -> None:
    graph = _graph()
    assert "kvmigrate.tryout.demo" in graph["kvmigrate.cli.tryout"]  # a function-level import is seen
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_each_face_reaches_the_library_through_api_only() -> None:
    allowed = {"tryout": {"tryout", "api", "model", "kvmigrate"},
               "cli": {"cli", "api", "report", "model", "tryout", "kvmigrate"},
               "report": {"report", "model", "kvmigrate"}}
    wrong = sorted(f"{module} imports {target}" for module, targets in _graph().items()
                   if _layer(module) in allowed for target in targets if _layer(target) not in allowed[_layer(module)])
    assert wrong == []


def test_the_library_never_imports_its_faces() -> None:
    faces = {"cli", "tryout", "report"}
    wrong = sorted(f"{module} imports {target}" for module, targets in _graph().items()
                   if _layer(module) not in faces | {"launch", "__main__", "kvmigrate"}
                   for target in targets if _layer(target) in faces)
    assert wrong == []
