"""One orchestrator per command: setup, backfill, verify, dual-write and cutover, cleanup, restore,
rehearse, inventory, plan, doctor, status, rejects, shadow, prisma."""
