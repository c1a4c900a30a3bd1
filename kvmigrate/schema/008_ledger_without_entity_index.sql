-- The ledger loses its index on (entity, status). Backfill writes a ledger row per key scanned,
-- and the index cost about a twelfth of a backfill's Postgres time (measured on 200,000 `msg:*`
-- keys, four runs each way: 6.05 -> 5.55 s of Postgres CPU, 9.25 -> 8.43 s of wall time). No
-- statement needs it: every query by entity or status counts or lists a whole entity once per
-- command (status, verify's sample, the wrong-store check), a single pass over the ledger.
DROP INDEX IF EXISTS kvmigrate.ledger_entity_status;
