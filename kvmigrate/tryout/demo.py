"""`kvmigrate demo`: the whole four-phase migration on realistic data, with a live app.

Embedded Postgres + Valkey (or the given URLs) → seed a /vibe keyspace → setup → dual-write
(backfill + verify, repair if the app's non-fatal Postgres writes missed something) → cutover →
cleanup (archive + delete), while a simulated app keeps writing and obeying the flags. The run
ends with a report and one check: every write the app made is in Postgres exactly once, with the
value it wrote last. Exit 0 only if that check holds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from kvmigrate import api
from kvmigrate.api import Bad, ShadowResult, handle
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.serial import to_dict
from kvmigrate.tryout.app_sim import AppCheck, SimApp, check_writes
from kvmigrate.tryout.embedded import embedded_servers
from kvmigrate.tryout.seed import SeedResult, seed_keyspace, write_memory_files

HOBBY_DAILY_QUOTA = 3000
FLAG_TTL = 0.5  # how long the simulated app caches the flags; every flag change waits longer


@dataclass
class Step:
    name: str
    seconds: float
    kv_requests: int
    result: Any = None


@dataclass
class DemoResult:
    seed: SeedResult | None = None
    steps: list[Step] = field(default_factory=list)
    app: AppCheck | None = None
    app_writes_by_phase: dict[str, int] = field(default_factory=dict)
    app_kv_commands: int = 0
    app_errors: list[str] = field(default_factory=list)
    naive_requests: int = 0
    floor_requests: int = 0  # the fewest billed commands any tool needs for the same passes
    urls: dict[str, str] = field(default_factory=dict)
    files: str | None = None  # the archive and memory files, when kept
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    kept_after_cleanup: dict[str, int] = field(default_factory=dict)
    kv_left: dict[str, int] = field(default_factory=dict)
    shadow: ShadowResult | None = None

    @property
    def kv_requests(self) -> int:
        return sum(s.kv_requests for s in self.steps)

    @property
    def ok(self) -> bool:
        return self.app is not None and self.app.ok and not self.app_errors


def run_demo(config: Config, *, users: int = 46, seed: int = 7, keep: bool = False,
             say: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo; embedded servers unless both URLs are given (then the KV db must be empty).

    The archive and memory files go to a temporary folder, deleted at the end with the embedded
    servers; kept (and named in the report) with `keep` or on servers of the caller's."""
    if bool(config.pg_url) != bool(config.kv_url):
        raise ConfigError("the demo runs on embedded servers, or on both --pg-url and --kv-url: one was given",
                          hint="give both URLs (an empty KV db and a scratch database), or neither")
    if config.pg_url and config.kv_url:
        demo = _Demo(config, users, seed, say)
        result = demo.run()
        result.files = str(demo.workdir)
        return result
    with embedded_servers(keep=keep) as servers:
        demo = _Demo(config.model_copy(update={"pg_url": servers.pg_url, "kv_url": servers.kv_url}),
                     users, seed, say)
        try:
            result = demo.run()
        finally:
            if not keep:
                shutil.rmtree(demo.workdir, ignore_errors=True)
        if keep:
            result.urls = {"pg_url": servers.pg_url, "kv_url": servers.kv_url, "stop": servers.stop_hint}
            result.files = str(demo.workdir)
        return result


class _Demo:
    def __init__(self, config: Config, users: int, seed: int, say: Callable[[str], None] | None) -> None:
        self.config = config
        self.users = users
        self.seed = seed
        self.say = say or (lambda _m: None)
        self.result = DemoResult()
        self.workdir = Path(tempfile.mkdtemp(prefix="kvmigrate-demo-files-"))

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        self.say(f"== {name}")
        st = Step(name, 0.0, 0)
        started = time.perf_counter()
        yield st
        st.seconds = time.perf_counter() - started
        self.result.steps.append(st)

    def run(self) -> DemoResult:
        cfg = self.config
        with self.step("seed") as st:
            client = _kv(cfg.require_kv(), "seed")
            self.result.seed = seed_keyspace(client, users=self.users, seed=self.seed)
            write_memory_files(self.workdir / "memories", users=self.users, seed=self.seed)
            handles = _app_handles(client.call("HKEYS", "vibe:handles"))
            client.redis.close()
            st.result = self.result.seed
        with self.step("setup") as st:
            st.result = api.setup(cfg)
        with self.step("inventory") as st:
            inv = api.inventory(cfg)
            st.result, st.kv_requests = inv, inv.budget.spent
            self.result.naive_requests = inv.naive_requests
            self.result.floor_requests = inv.pages + 2 * inv.backfill.floor + inv.cleanup.floor + 3
        app = SimApp(cfg.require_kv(), cfg.require_pg(), handles[: max(4, min(len(handles), 20))], seed=self.seed,
                     flag_ttl=FLAG_TTL).start()
        try:
            self._phases(app)
        finally:
            app.stop()
        self._finish(app)
        return self.result

    def _phases(self, app: SimApp) -> None:
        cfg, settle = self.config, FLAG_TTL * 3
        time.sleep(0.5)  # the app writes to KV only for a moment
        with self.step("dual-write: backfill + verify") as st:
            dual = api.dual_write(cfg, settle=settle, recheck_delay=1.0)
            st.result, st.kv_requests = dual, dual.kv_requests
        with self.step("backfill memories (files)") as st:
            mem = api.backfill(cfg, entities=["memories"], memories_dir=self.workdir / "memories")
            st.result, st.kv_requests = mem, mem.budget.spent
        time.sleep(0.5)  # dual writes for a while
        with self.step("verify --repair") as st:
            ver = api.verify(cfg, repair=True, recheck_delay=1.0, memories_dir=self.workdir / "memories")
            st.result, st.kv_requests = ver, ver.budget.spent
        with self.step("shadow: the app's read views, KV vs Postgres") as st:
            # shown, not gating: the simulated app keeps writing, and a view read between its KV
            # write and its Postgres write differs for that moment (shadow does not re-check)
            shadow = api.shadow(cfg, users=20)
            st.result, st.kv_requests = shadow, shadow.kv_requests
            self.result.shadow = shadow
        with self.step("cutover") as st:
            cut = api.cutover(cfg)
            st.result, st.kv_requests = cut, cut.kv_requests
        time.sleep(0.5)  # the app reads from Postgres now
        with self.step("cleanup: archive + delete") as st:
            clean = api.cleanup(cfg, archive_dir=self.workdir / "archive", yes=True, settle=settle,
                                     recheck_delay=1.0)
            st.result, st.kv_requests = clean, clean.kv_requests
            self.result.deleted = clean.cleanup.deleted
            for e in clean.cleanup.entities.values():
                for reason, kept in e.kept.items():
                    self.result.kept_after_cleanup[reason] = self.result.kept_after_cleanup.get(reason, 0) + kept.count
        time.sleep(0.5)  # Postgres only

    def _finish(self, app: SimApp) -> None:
        r = self.result
        r.kv_left = _kv_left(self.config.require_kv())
        r.app_errors = app.errors
        r.app_kv_commands = app.kv_commands + app.flags.reads
        for w in app.writes:
            r.app_writes_by_phase[w.phase] = r.app_writes_by_phase.get(w.phase, 0) + 1
        with psycopg.connect(self.config.require_pg()) as conn:
            r.app = check_writes(conn, app.writes)
        r.counts, r.rejects_by_reason = api.ledger_and_rejects(self.config)


def _app_handles(raw: list[Any]) -> list[str]:
    """Registered handles already in canonical form: the ones the simulated app writes as."""
    out = []
    for h in raw:
        text = h.decode("utf-8", "replace") if isinstance(h, bytes) else str(h)
        try:
            if handle(text) == text:
                out.append(text)
        except Bad:
            continue
    return sorted(out)


def _kv(url: str, phase: str) -> api.KvClient:
    """The library's KV client, on a budget of its own (the demo's own reads and writes are not
    part of the migration's count)."""
    return api.connect_kv(url, RequestBudget(cap=None, phase=phase))


def _kv_left(url: str) -> dict[str, int]:
    """What is still in KV after the demo, by how kvmigrate classifies it (a demo report, not
    part of the migration, so these reads are not counted)."""
    client = _kv(url, "demo")
    try:
        return api.keys_by_owner(client)
    finally:
        client.redis.close()

#: A naive per-key migration reads every entity key once per pass (backfill, verify, archive)
#: and deletes each with its own command.
NAIVE_PASSES = 4


@to_dict.register
def _(r: DemoResult) -> dict[str, Any]:
    return {
        "ok": r.ok,
        "steps": [{"name": s.name, "seconds": round(s.seconds, 3), "kv_requests": s.kv_requests} for s in r.steps],
        "kv_requests": r.kv_requests,
        "naive_backfill_requests": r.naive_requests,
        "naive_migration_requests": r.naive_requests * NAIVE_PASSES,
        "floor_migration_requests": r.floor_requests,
        "hobby_daily_quota": HOBBY_DAILY_QUOTA,
        "counts": r.counts,
        "rejects_by_reason": r.rejects_by_reason,
        "cleanup_deleted": r.deleted,
        "cleanup_kept": r.kept_after_cleanup,
        "kv_left": r.kv_left,
        "shadow": None if r.shadow is None else to_dict(r.shadow),
        "seed": None if r.seed is None else {"keys": r.seed.keys_written, "by_family": r.seed.by_family},
        "app": None if r.app is None else {**to_dict(r.app), "ok": r.app.ok},
        "app_writes_by_phase": r.app_writes_by_phase,
        "app_kv_commands": r.app_kv_commands,
        "app_errors": r.app_errors,
        "urls": r.urls,
        "files": r.files,
    }
