-- The app's tables from the migration RFC, with deliberate changes:
-- * TIMESTAMPTZ everywhere: KV holds UTC epochs, and a naive TIMESTAMP invites timezone bugs;
-- * ids keep the ids KV already has (TEXT), so a message keeps its `msg_...` id;
-- * columns the app relies on but the RFC forgot: invites.expires_at and invites.status;
--   board_posts.tags; a `details` JSONB on board_posts, invites, streaks and memories keeps every
--   source field that has no column (reactions, comments, activeDays, bonus_for_inviting...), so
--   nothing is dropped.
-- gen_random_uuid() is built in since PostgreSQL 13; no extension is needed.

CREATE TABLE users (
    handle        TEXT PRIMARY KEY,
    display_name  TEXT,
    one_liner     TEXT,
    created_at    TIMESTAMPTZ DEFAULT now(),
    invited_by    TEXT REFERENCES users(handle),
    settings      JSONB DEFAULT '{}'
);

CREATE TABLE messages (
    id           TEXT PRIMARY KEY DEFAULT gen_random_uuid(),
    from_handle  TEXT NOT NULL REFERENCES users(handle),
    to_handle    TEXT NOT NULL REFERENCES users(handle),
    content      TEXT NOT NULL,
    payload      JSONB,
    read         BOOLEAN DEFAULT false,
    created_at   TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX idx_messages_thread ON messages(from_handle, to_handle);
CREATE INDEX idx_messages_unread ON messages(to_handle, read) WHERE read = false;

CREATE TABLE board_posts (
    id          TEXT PRIMARY KEY DEFAULT gen_random_uuid(),
    author      TEXT NOT NULL REFERENCES users(handle),
    content     TEXT NOT NULL,
    category    TEXT DEFAULT 'general',
    tags        TEXT[] DEFAULT '{}',
    details     JSONB DEFAULT '{}',
    created_at  TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE streaks (
    handle          TEXT PRIMARY KEY REFERENCES users(handle),
    current_streak  INT DEFAULT 0,
    longest_streak  INT DEFAULT 0,
    total_days      INT DEFAULT 0,
    last_active     DATE,
    achievements    TEXT[] DEFAULT '{}',
    details         JSONB DEFAULT '{}'
);

CREATE TABLE memories (
    id           TEXT PRIMARY KEY DEFAULT gen_random_uuid(),
    owner        TEXT NOT NULL REFERENCES users(handle),
    about        TEXT NOT NULL REFERENCES users(handle),
    observation  TEXT NOT NULL,
    details      JSONB DEFAULT '{}',
    created_at   TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX idx_memories_owner ON memories(owner, about);

CREATE TABLE game_results (
    id          TEXT PRIMARY KEY DEFAULT gen_random_uuid(),
    game        TEXT NOT NULL,
    players     TEXT[] NOT NULL,
    winner      TEXT,
    state       JSONB,
    created_at  TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE invites (
    code        TEXT PRIMARY KEY,
    created_by  TEXT NOT NULL REFERENCES users(handle),
    used_by     TEXT REFERENCES users(handle),
    created_at  TIMESTAMPTZ DEFAULT now(),
    used_at     TIMESTAMPTZ,
    expires_at  TIMESTAMPTZ,
    status      TEXT,
    details     JSONB DEFAULT '{}'
);
