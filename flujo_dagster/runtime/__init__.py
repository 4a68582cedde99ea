"""Dagster-free run-time logic: calling steps, running agents, building prompts."""
