-- The digest of the companion key a record was read with (`unread:{h}` for `messages:{h}`: its
-- counters decide the list's read state). An unchanged rerun skips a record only when both its
-- own value and its companion are unchanged, so such lists are no longer restaged on every run.
-- `value_hash` stays the digest of the key's own value (verify and cleanup compare it with KV).

ALTER TABLE kvmigrate.ledger ADD COLUMN companion_hash TEXT;
