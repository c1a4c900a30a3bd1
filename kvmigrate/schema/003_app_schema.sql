-- Where setup installed the app's tables: `public` (the server's search_path) unless setup ran
-- with --schema NAME. Every command checks that its connection resolves the tables in this
-- schema, so a run without --schema never reads or writes another app's `public.users`.
-- One row; setup writes it in the same transaction as the schema files.
CREATE TABLE kvmigrate.app_schema (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    name       TEXT NOT NULL,
    set_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
