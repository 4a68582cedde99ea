"""Storage and resources: the IO manager and its Dagster types, the agent runtime, the budget ledger wiring and
approval settings."""
