-- Cheaper bookkeeping: backfill writes a ledger row per key scanned and a row_origin row per row
-- loaded, so every index and check on them is paid once per key.
-- * The ledger's run_id no longer has a foreign key to kvmigrate.runs: the check ran once per
--   row (a lookup and a row lock on the same run), about a quarter of the ledger's insert time
--   (measured: 50,000 rows, 618 -> 449 ms). The run row is always committed before its first
--   ledger row, and kvmigrate never deletes runs.
-- * row_origin loses its index on (source_key, source_field): every statement reads row_origin
--   by (tbl, pk), its primary key, and the index cost about a quarter of each insert
--   (50,000 rows, 444-617 -> 344-394 ms).

ALTER TABLE kvmigrate.ledger DROP CONSTRAINT IF EXISTS ledger_run_id_fkey;
DROP INDEX IF EXISTS kvmigrate.row_origin_source;
