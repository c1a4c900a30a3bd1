"""Everything that talks to Postgres."""
