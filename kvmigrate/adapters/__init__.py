"""The outside world: KV (every command through KvClient and its budget), Postgres (loader,
migrations, and the store: every statement on kvmigrate.* tables) and files (archive, memories)."""
