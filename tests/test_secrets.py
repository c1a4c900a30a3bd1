"""Secrets and dry runs, against servers that demand a password.

The test's own Postgres (a role logging in with scram-sha-256) and Valkey (`requirepass`) make
every URL carry a secret. Every command is run through the command line — the whole migration,
`--json` and human output, `-vv` logs, error paths (a wrong password, a server that is down, a
malformed URL) — and the test password must appear in none of: stdout, stderr, JSON reports,
the reject export, the rehearse reports, the archive files and manifest, kvmigrate's tables in
Postgres, or the flags hash in KV. Archives and exports are private (0600, folder 0700).

Dry runs (and read-only commands) are checked through the servers' own statistics, not by
trusting the code: KV `INFO commandstats` shows no write command, and Postgres counts no
inserted, updated or deleted tuple and no transaction id for the database.

No SQL is built from input: every statement kvmigrate sends is a literal, text fixed in the
source, or composed with psycopg's `sql` module; values travel as parameters (checked on the
source with `ast`).
"""

from __future__ import annotations

import ast
import gzip
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg
import pytest
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvmigrate.adapters.kv.client import WRITE_COMMANDS
from tests.fixtures.faults import (
    Finished,
    Launcher,
    PrivatePostgres,
    PrivateValkey,
    launcher,
    note,
    run_module,
    seed_world,
    wait_backends_gone,
)

PASSWORD = "Pw-9f3kQz-s3cret"
KV_TOKEN = "Tk-77AbXy-t0ken"
WRONG = "Wr0ng-9zz1-guess"
SECRETS = (PASSWORD, KV_TOKEN, WRONG)


@dataclass
class Secured:
    pg: PrivatePostgres
    kv: PrivateValkey
    pg_url: str
    branch_url: str
    kv_url: str
    root: Path
    outputs: list[str] = field(default_factory=list)

    def cli(self, run: Launcher, *args: str, expect: tuple[int, ...] = (0,)) -> Finished:
        done = run.run("--pg-url", self.pg_url, "--kv-url", self.kv_url, *args)
        self.outputs.append(done.stdout + done.stderr)
        assert done.code in expect, (args, done.output)
        return done


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    pg, kv = PrivatePostgres(), PrivateValkey(root / "kv", password=KV_TOKEN)
    try:
        pg.start()
        kv.start()
        url = pg.add_user("kvm_app", PASSWORD, "vibe")
        with psycopg.connect(pg.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE branch OWNER kvm_app"))
        client = kv.client()
        seed_world(client, root / "memories")
        client.close()
        yield Secured(pg, kv, url, url.rsplit("/", 1)[0] + "/branch", kv.url(0), root)
    finally:
        kv.close()
        pg.close()


@pytest.fixture
def runner(secured: Secured) -> Iterator[Launcher]:
    home = secured.root / "home"
    home.mkdir(exist_ok=True)
    with launcher({"HOME": str(home)}) as run:
        yield run


class Writes:
    """Write activity the servers themselves count: KV commands by name, and per table of the
    database the tuples inserted, updated and deleted, plus the transaction ids used."""

    def __init__(self, s: Secured, dbname: str = "vibe") -> None:
        self.s = s
        self.dbname = dbname
        self.before = self.snapshot()

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        vibe = self.s.pg.admin_url.rsplit("/", 1)[0] + "/" + self.dbname
        wait_backends_gone(vibe)
        client = self.s.kv.client()
        stats = client.info("commandstats")
        client.close()
        calls = {c: int(v["calls"]) for c, v in ((n.removeprefix("cmdstat_").upper(), v) for n, v in stats.items())
                 if c in WRITE_COMMANDS}
        with psycopg.connect(vibe, autocommit=True) as conn:
            tables = {f"{schema}.{name}": int(n) for schema, name, n in conn.execute(
                "SELECT schemaname, relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_all_tables")}
            row = conn.execute("SELECT age(datfrozenxid) FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone()
        assert row is not None
        return calls, tables, int(row[0])

    def changes(self) -> tuple[dict[str, int], set[str], int]:
        """KV write commands sent, tables written, transaction ids used since the start (once
        the counters are steady: a finished backend's counts reach the statistics as it exits)."""
        last = self.snapshot()
        for _ in range(20):
            time.sleep(0.1)
            now = self.snapshot()
            if now == last:
                break
            last = now
        calls, tables, xid = last
        kv = {c: n - self.before[0].get(c, 0) for c, n in calls.items()
              if c in WRITE_COMMANDS and n != self.before[0].get(c, 0)}
        written = {t for t, n in tables.items() if n != self.before[1].get(t, 0)}
        return kv, written, xid - self.before[2]


def test_the_whole_migration_never_shows_a_password_or_token(
        secured: Secured, runner: Launcher, request: pytest.FixtureRequest) -> None:
    s, out = secured, secured.root / "out"
    out.mkdir()
    s.cli(runner, "--json", "setup")
    s.cli(runner, "setup", "--dry-run")
    s.cli(runner, "--json", "doctor")
    s.cli(runner, "-vv", "inventory")
    s.cli(runner, "--json", "-vv", "backfill", "--memories-dir", str(s.root / "memories"))
    s.cli(runner, "backfill", "--memories-dir", str(s.root / "memories"))
    s.cli(runner, "--json", "rejects", "--export", str(out / "rejects.jsonl"))
    s.cli(runner, "verify", "--recheck-delay", "0", "--memories-dir", str(s.root / "memories"))
    s.cli(runner, "--json", "dual-write", "--settle", "0", "--recheck-delay", "0")
    s.cli(runner, "--json", "cutover")
    s.cli(runner, "--json", "status")
    s.cli(runner, "--json", "cleanup", "--archive-dir", str(out / "archive"), "--yes", "--settle", "0")
    s.cli(runner, "--json", "restore", str(out / "archive"), "--yes")
    s.cli(runner, "status")
    rehearse = runner.run("--kv-url", s.kv_url, "--json", "rehearse", "--pg-url", s.branch_url, "--report",
                          str(out / "report.json"), "--markdown", str(out / "report.md"))
    s.outputs.append(rehearse.output)
    assert rehearse.code in (0, 1, 5), rehearse.output
    # error paths: a wrong password, a server that is down, a malformed URL, the environment
    wrong_pg = s.pg_url.replace(PASSWORD, WRONG)
    for args in (["--pg-url", wrong_pg, "--kv-url", s.kv_url, "status"],
                 ["--pg-url", s.pg_url, "--kv-url", s.kv_url.replace(KV_TOKEN, WRONG), "--json", "doctor"],
                 ["--pg-url", s.pg_url.replace(str(s.pg.port), "1"), "--kv-url", s.kv_url, "backfill"],
                 ["--pg-url", s.pg_url + "?sslmode=bogus", "--kv-url", s.kv_url, "--json", "status"],
                 ["--pg-url", "postgresql://kvm_app:" + PASSWORD + "@[broken/vibe", "--json", "setup"]):
        done = runner.run(*args, env={"KVMIGRATE_CONNECT_RETRIES": "1"})
        assert done.code in (1, 2, 3), done.output
        s.outputs.append(done.output)
    env = {"DATABASE_URL": s.pg_url, "KV_URL": s.kv_url}
    plain = run_module("-v", "status", env=env)
    s.outputs.append(plain.stdout + plain.stderr)
    assert plain.returncode == 0, plain.stderr

    places = {f"output of command {i}": text for i, text in enumerate(s.outputs)}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            places[str(path.relative_to(out))] = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    places["kvmigrate tables"] = kvmigrate_tables(s)
    client = s.kv.client()
    places["KV flags"] = repr(client.hgetall("kvmigrate:flags"))
    client.close()
    leaks = sorted(f"{secret!r} in {where}" for where, text in places.items() for secret in SECRETS if secret in text)
    assert not leaks, leaks
    assert "***" in "".join(s.outputs)  # URLs are shown, masked
    archive = out / "archive"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    private = [archive / "manifest.json", *archive.glob("*.jsonl.gz"), out / "rejects.jsonl"]
    assert len(private) >= 3
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    note(request, f"{len(s.outputs)} command runs, {len(places)} outputs, files and tables searched "
         f"for {len(SECRETS)} secrets: 0 found; archive and export 0600")


def kvmigrate_tables(s: Secured) -> str:
    """Every row of every kvmigrate table, as text."""
    parts = []
    with psycopg.connect(s.pg_url) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'kvmigrate'")]
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier("kvmigrate", table))
            parts.extend(r for (r,) in conn.execute(query))
    assert len(tables) >= 5
    return "\n".join(parts)


def test_dry_runs_and_read_only_commands_write_nothing_by_the_servers_own_counts(
        secured: Secured, runner: Launcher, request: pytest.FixtureRequest) -> None:
    # A store and a database of this test's own, so each dry run has real work it leaves undone.
    with psycopg.connect(secured.pg.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE dry OWNER kvm_app"))
    client = secured.kv.client(3)
    seed_world(client, secured.root / "dry-memories")
    client.close()
    s = Secured(secured.pg, secured.kv, secured.pg_url.rsplit("/", 1)[0] + "/dry", secured.branch_url,
                secured.kv.url(3), secured.root)
    s.cli(runner, "setup")

    def dry(*args: str) -> dict[str, object]:
        writes = Writes(s, "dry")
        done = s.cli(runner, "--json", *args)
        assert writes.changes() == ({}, set(), 0), args
        return dict(orjson.loads(done.stdout)["result"])

    assert dry("setup", "--dry-run")["dry_run"] is True
    backfill = dry("backfill", "--dry-run")
    assert sum(t["migrated"] for t in backfill["entities"].values()) > 100  # everything read and transformed
    s.cli(runner, "dual-write", "--settle", "0", "--recheck-delay", "0")
    s.cli(runner, "cutover")
    keys = secured.kv.client(3).dbsize()
    cleanup = dry("cleanup", "--dry-run", "--archive-dir", str(s.root / "never"))
    entities = cleanup["cleanup"]["entities"]  # type: ignore[index]
    assert sum(e["deletable"] for e in entities.values()) > 100  # it would delete, and did not
    assert not (s.root / "never").exists()
    assert secured.kv.client(3).dbsize() == keys
    accounting = {"kvmigrate.runs", "kvmigrate.kv_requests"}  # read-only commands log their KV spend
    for args in (["inventory"], ["status"], ["rejects"], ["doctor"], ["plan"]):
        writes = Writes(s, "dry")
        s.cli(runner, "--json", *args, expect=(0, 1))
        kv, tables, _ = writes.changes()
        assert not kv and tables <= accounting, (args, kv, tables)
    read = sum(t["migrated"] for t in backfill["entities"].values())  # type: ignore[attr-defined]
    note(request, f"setup/backfill/cleanup --dry-run (backfill read {read} records, cleanup found "
         f"{sum(e['deletable'] for e in entities.values())} deletable keys): 0 KV write commands, 0 tuples "
         "written, 0 transaction ids; inventory/status/rejects/doctor/plan: 0 KV writes, Postgres only for their "
         "KV-spend record")


def test_servers_really_demand_the_secrets(secured: Secured) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(secured.pg_url.replace(PASSWORD, WRONG), connect_timeout=3).close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=secured.kv.port, password=WRONG, retry=Retry(NoBackoff(), 0)).ping()


# --------------------------------------------------------------------------- no SQL from input

_SQL_CALLS = frozenset({"execute", "executemany", "copy"})


def _sql_kind(node: ast.AST, names: dict[str, list[ast.AST]], seen: frozenset[str] = frozenset()) -> str:
    """"safe" (a literal, or built with psycopg.sql), "built" (text assembled from values), or
    "unknown"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return "safe"
    if isinstance(node, ast.JoinedStr):  # safe only when every part is a constant of the module
        parts = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        return "safe" if all(_constant(p, names) for p in parts) else "built"
    if isinstance(node, ast.BinOp):  # "..." + x, "..." % x: text assembled from values
        constant = isinstance(node.op, ast.Add) and _constant(node.left, names) and _constant(node.right, names)
        return "safe" if constant else "built"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        base = node.func.value
        if node.func.attr == "format":  # sql.SQL(...).format(...) is safe; "...".format(...) is not
            return "safe" if _sql_kind(base, names, seen) == "sql" or _is_sql(base) else "built"
        if _is_sql(node):
            return "safe"
    if _is_sql(node):
        return "safe"
    ref = _ref(node)
    if isinstance(node, ast.Call):  # a function of this module that returns SQL
        ref = "return " + (_ref(node.func) or "?")
    if ref in names and ref not in seen:
        kinds = {_sql_kind(v, names, seen | {ref}) for v in names[ref]}
        return "built" if "built" in kinds else "unknown" if "unknown" in kinds else "safe"
    return "unknown"


def _ref(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return "self." + node.attr
    return ""


def _sources(tree: ast.AST) -> dict[str, list[ast.AST]]:
    """What each name can hold: assignments (`x`, `self.x`), what a function returns
    (`return f`), and, for a parameter, the arguments its module's callers pass."""
    names: dict[str, list[ast.AST]] = {}
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if _ref(target):
                names.setdefault(_ref(target), []).append(node.value)  # type: ignore[union-attr]
        if isinstance(node, ast.FunctionDef):
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    names.setdefault("return " + node.name, []).append(ret.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            params = [a.arg for a in functions[node.func.id].args.args]
            for param, arg in zip(params, node.args, strict=False):
                names.setdefault(param, []).append(arg)
    return names


def _constant(node: ast.AST, names: dict[str, list[ast.AST]]) -> bool:
    """A string (or a tuple of strings, or a join of them) fixed in the source."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_constant(e, names) for e in node.elts)
    if isinstance(node, ast.Name) and node.id in names:
        return all(_constant(v, names) for v in names[node.id])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
        return _constant(node.func.value, names) and all(_constant(a, names) for a in node.args)
    return False


def _is_sql(node: ast.AST) -> bool:
    """A psycopg.sql composition: sql.SQL(...), sql.Identifier(...), ….format(...), ….join(...)."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "sql":
            return True
        node = node.func.value
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        isinstance(node.func.value, ast.Name) and node.func.value.id == "sql"


def test_no_sql_is_built_from_input_only_psycopg_parameters_and_sql_composition() -> None:
    probe = ast.parse("def f(c, key):\n c.execute(f'SELECT {key}')\n c.execute('SELECT ' + key)\n"
                      " c.execute('SELECT %s' % key)\n c.execute('SELECT {}'.format(key))\n"
                      " c.execute('SELECT %s', (key,))\n c.execute(sql.SQL('SELECT {}').format(sql.Identifier(key)))")
    calls = [n for n in ast.walk(probe) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "execute"]
    kinds = [_sql_kind(n.args[0], _sources(probe)) for n in sorted(calls, key=lambda n: n.lineno)]
    assert kinds == ["built", "built", "built", "built", "safe", "safe"]  # the checker itself works
    root = Path(__file__).resolve().parents[1] / "kvmigrate"
    found: dict[str, list[str]] = {"built": [], "unknown": [], "safe": []}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = _sources(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SQL_CALLS \
                    and node.args:
                kind = _sql_kind(node.args[0], names)
                found[kind].append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not found["built"], f"SQL text built from values: {found['built']}"
    assert not found["unknown"], f"SQL of unknown origin: {found['unknown']}"
    assert len(found["safe"]) > 50
