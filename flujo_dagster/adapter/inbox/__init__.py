"""The reviewers' inbox: a small web app listing every gate runs are parked at, each gate's payload and policy,
and a form that records a decision with `decide` and resumes the run at once (`flujo-dagster inbox`)."""
