"""Op bodies: the code that runs inside a Dagster step (leaf steps, control flow, Map, approval gates, checks and
review metadata)."""
