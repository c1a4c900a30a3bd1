-- Persistent data the migration RFC did not list: DM consent, friendships and moderation
-- reports. They are neither presence, sessions nor rate limits, so by the RFC's own split they
-- move to Postgres with the rest. Each table keeps every source field without a column in a
-- `details` JSONB, like the app tables of 002, and every handle references users(handle)
-- (kvmigrate creates placeholder users for handles with no record).
--
-- kvmigrate loads rows by one text key (`id`), so the two tables keyed by a pair of handles
-- carry that pair also as `id` ('from:to', 'a:b'; handles never hold ':'), unique and checked
-- against the columns; the primary key is the pair itself.

CREATE TABLE user_connections (
    from_handle  TEXT NOT NULL REFERENCES users(handle),
    to_handle    TEXT NOT NULL REFERENCES users(handle),
    id           TEXT NOT NULL UNIQUE CHECK (id = from_handle || ':' || to_handle),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'blocked')),
    created_at   TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ,
    details      JSONB DEFAULT '{}',
    PRIMARY KEY (from_handle, to_handle)
);
CREATE INDEX idx_user_connections_to ON user_connections(to_handle, status);

-- One row per unordered pair (handle_a < handle_b); `listed_by` names the side(s) whose
-- friends:{h} set lists the other, so an asymmetric pair stays visible (mutual = false).
CREATE TABLE friendships (
    handle_a   TEXT NOT NULL REFERENCES users(handle),
    handle_b   TEXT NOT NULL REFERENCES users(handle),
    id         TEXT NOT NULL UNIQUE CHECK (id = handle_a || ':' || handle_b),
    mutual     BOOLEAN NOT NULL,
    listed_by  TEXT[] NOT NULL,
    PRIMARY KEY (handle_a, handle_b),
    CHECK (handle_a < handle_b)
);
CREATE INDEX idx_friendships_b ON friendships(handle_b);

CREATE TABLE reports (
    id           TEXT PRIMARY KEY,
    reporter     TEXT REFERENCES users(handle),
    reported     TEXT NOT NULL REFERENCES users(handle),
    reason       TEXT,
    status       TEXT,
    message_id   TEXT,
    created_at   TIMESTAMPTZ,
    reviewed_at  TIMESTAMPTZ,
    details      JSONB DEFAULT '{}'
);
CREATE INDEX idx_reports_reported ON reports(reported);
CREATE INDEX idx_reports_pending ON reports(created_at) WHERE status = 'pending';
