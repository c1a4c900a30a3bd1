-- A `messages` row loaded from its own `msg:{id}` record no longer gets a row_origin row: the
-- record's ledger row says `owns_row` instead, and the row's owner is that record (rank 40)
-- unless row_origin names another (see adapters.pg.owners). A backfill writes a ledger row per
-- key anyway; the row_origin row per message was about a sixth of its Postgres time (measured
-- on 200,000 `msg:*` keys). Rows of other tables, and messages owned by another source, keep
-- their row_origin row.
ALTER TABLE kvmigrate.ledger ADD COLUMN IF NOT EXISTS owns_row BOOLEAN NOT NULL DEFAULT false;
