"""Everything that talks to the KV store."""
