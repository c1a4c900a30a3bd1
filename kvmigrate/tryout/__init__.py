"""Try kvmigrate without an app: the demo, the simulated app, embedded servers and the seed data."""
