-- kvmigrate's own bookkeeping, in its own schema so it never mixes with the app's tables.
-- runs: one row per command run; checkpoints: where a backfill resumes; ledger: one row per
-- source record (a KV key, or one field of a big registry hash) with its final bucket, the
-- digest of the value verify last found consistent (cleanup deletes only that value), and when
-- cleanup archived and deleted it;
-- rejects: the original value and the reason; row_origin: which source owns each target row;
-- phases + phase_history: the dual-write/read flags the app obeys; verify_results: the
-- evidence the cutover gate reads; kv_requests: commands spent per day, against the quota.
CREATE SCHEMA IF NOT EXISTS kvmigrate;

CREATE TABLE kvmigrate.runs (
    id           BIGSERIAL PRIMARY KEY,
    command      TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    status       TEXT NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'ok', 'stopped', 'failed')),
    dry_run      BOOLEAN NOT NULL DEFAULT false,
    options      JSONB NOT NULL DEFAULT '{}',
    kv_requests  INT NOT NULL DEFAULT 0,
    result       JSONB NOT NULL DEFAULT '{}',
    os_user      TEXT,
    host         TEXT
);

CREATE TABLE kvmigrate.checkpoints (
    name        TEXT PRIMARY KEY,
    cursor      TEXT NOT NULL,
    run_id      BIGINT REFERENCES kvmigrate.runs(id),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE kvmigrate.ledger (
    key         TEXT NOT NULL,
    field       TEXT NOT NULL DEFAULT '',
    entity      TEXT NOT NULL,
    family      TEXT NOT NULL,
    redis_type  TEXT NOT NULL,
    value_hash  TEXT,
    status      TEXT NOT NULL CHECK (status IN ('migrated', 'rejected', 'kept', 'unknown')),
    reason      TEXT,
    rows        INT NOT NULL DEFAULT 0,
    run_id      BIGINT REFERENCES kvmigrate.runs(id),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    verified_hash TEXT,
    verified_at   TIMESTAMPTZ,
    archived_at   TIMESTAMPTZ,
    deleted_at    TIMESTAMPTZ,
    PRIMARY KEY (key, field)
);
CREATE INDEX ledger_entity_status ON kvmigrate.ledger (entity, status);

CREATE TABLE kvmigrate.rejects (
    key           TEXT NOT NULL,
    field         TEXT NOT NULL DEFAULT '',
    entity        TEXT NOT NULL,
    reason_code   TEXT NOT NULL,
    message       TEXT NOT NULL,
    raw_value     TEXT,
    raw_encoding  TEXT NOT NULL DEFAULT 'utf8' CHECK (raw_encoding IN ('utf8', 'base64', 'json')),
    run_id        BIGINT REFERENCES kvmigrate.runs(id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key, field)
);

CREATE TABLE kvmigrate.row_origin (
    tbl           TEXT NOT NULL,
    pk            TEXT NOT NULL,
    rank          INT NOT NULL,
    source_key    TEXT NOT NULL,
    source_field  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tbl, pk)
);
CREATE INDEX row_origin_source ON kvmigrate.row_origin (source_key, source_field);

-- fill_sources: every source's own values for a row merged from several records (users from
-- vibe:handles, vibe:agents, vibe:users and user:*), so the row is recomputed from all of them
-- whichever page brought which source.
CREATE TABLE kvmigrate.fill_sources (
    tbl           TEXT NOT NULL,
    pk            TEXT NOT NULL,
    source_key    TEXT NOT NULL,
    source_field  TEXT NOT NULL DEFAULT '',
    rank          INT NOT NULL,
    vals          JSONB NOT NULL,
    PRIMARY KEY (tbl, pk, source_key, source_field)
);

CREATE TABLE kvmigrate.phases (
    entity      TEXT PRIMARY KEY,
    writes      TEXT NOT NULL DEFAULT 'kv' CHECK (writes IN ('kv', 'dual', 'postgres')),
    reads       TEXT NOT NULL DEFAULT 'kv' CHECK (reads IN ('kv', 'postgres')),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE kvmigrate.phase_history (
    id           BIGSERIAL PRIMARY KEY,
    entity       TEXT NOT NULL,
    from_writes  TEXT,
    from_reads   TEXT,
    to_writes    TEXT NOT NULL,
    to_reads     TEXT NOT NULL,
    changed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    os_user      TEXT,
    host         TEXT,
    reason       TEXT
);

CREATE TABLE kvmigrate.verify_results (
    id          BIGSERIAL PRIMARY KEY,
    run_id      BIGINT REFERENCES kvmigrate.runs(id),
    entity      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    sampled     BOOLEAN NOT NULL DEFAULT false,
    checked     INT NOT NULL,
    missing     INT NOT NULL,
    extra       INT NOT NULL,
    different   INT NOT NULL,
    healed      INT NOT NULL DEFAULT 0,
    clean       BOOLEAN NOT NULL,
    verified_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX verify_results_entity ON kvmigrate.verify_results (entity, verified_at DESC);

CREATE TABLE kvmigrate.kv_requests (
    day      DATE NOT NULL,
    command  TEXT NOT NULL,
    phase    TEXT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (day, command, phase)
);
