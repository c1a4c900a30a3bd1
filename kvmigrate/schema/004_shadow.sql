-- kvmigrate.shadow_results: what `kvmigrate shadow` found when it computed the app's read views
-- (inbox, thread, unread, board, leaderboard, invites, profile, games) from KV and from Postgres.
-- A row-level verify proves Postgres holds what KV holds; it does not prove the app will *show*
-- the same once it reads Postgres. `cutover --require-shadow` reads the latest run's rows here:
-- one per view, with the share that matched and the first differences, field by field.
CREATE TABLE kvmigrate.shadow_results (
    id           BIGSERIAL PRIMARY KEY,
    run_id       BIGINT NOT NULL REFERENCES kvmigrate.runs(id),
    view         TEXT NOT NULL,
    checked      INT NOT NULL,
    matched      INT NOT NULL,
    clean        BOOLEAN NOT NULL,
    examples     JSONB NOT NULL DEFAULT '[]',
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX shadow_results_run ON kvmigrate.shadow_results (run_id DESC);
