"""Run control: what reads and steers runs from outside their steps (approvals, the sensors, the decide job, costs,
the audit trail)."""
