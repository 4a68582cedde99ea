"""Approvals under a real `dagster dev` (webserver, daemon, code server; the default queued run coordinator),
on benchmarks/approval_defs.py: write (agent) -> review (gate) -> polish (agent) -> publish.

(a) Decision to resumed run: the time from writing the decision (`decide(...)`, what `flujo-dagster approve` does)
    until the run the `flujo_approvals` sensor launched through the webserver's GraphQL API has finished with
    SUCCESS, split into sensor (decision -> resume created), queue (created -> started: the daemon's dequeue and
    the run worker's start) and run; 5 repetitions at the sensor's minimum interval, one decision at a time.
(a') The same, decided the direct way (`decide(...)` then `resume_now(...)`: what the inbox and `flujo-dagster
    approve` do), under a second `dagster dev` whose sensor ticks every 600 s so that only the direct path launches:
    launch (decision -> resume created in the instance: in the run queue), queue, run. The figure issue 14 names,
    `direct_decision_to_resumed_p50_s`, is decision -> resume launched; the time to its start and to its end are
    reported beside it (they add the daemon's dequeue, every 5 s by default, and the run itself).
(b) Agent requests (the steps' `flujo/requests` metadata) in the parked run and in its resume.
(c) Events one pause adds: Dagster event records in the event log (log messages counted apart) of the runs that
    took the job through its gate, minus those of one run of the same steps without the gate (`bench_plain`: a
    decision binds to the run it was made on, so no run can start with its gate approved; the gate op's own
    events are therefore counted in what a pause adds). park: parked run + resumed run. wait: one run whose gate
    waits through one retry, then finds the decision. In-process executor (flujo's default). Sensor ticks are not
    in the event log and are not counted; a decision from the Launchpad adds a `flujo_decide` run, counted apart.
Prints the tables, then one JSON line:
{"bench": "approvals", "decision_to_resumed_p50_s": ..., "sensor_decision_to_launched_p50_s": ...,
 "direct_decision_to_resumed_p50_s": ..., "direct_decision_to_started_p50_s": ...,
 "direct_decision_to_succeeded_p50_s": ..., "sensor_interval_s": ..., "requests_before": ..., "requests_after": ...,
 "events_per_pause_park": ..., "events_per_pause_wait": ...}

    .venv/bin/python -m benchmarks.approvals
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunRecord

from flujo_dagster import names
from flujo_dagster.adapter.control.approvals import decide
from flujo_dagster.adapter.control.graphql import Webserver as Channel
from flujo_dagster.adapter.control.launch import resume_now
from tests.dagster_dev import DagsterDev, DagsterDevError, dagster_dev

TARGET = ("-m", "benchmarks.approval_defs", "-a", "defs")
SENSOR = "flujo_approvals"
DECISION = names.decision_tag("review", "ana")  # decide() writes one tag per reviewer
REQUESTER = {"dagster/user": "requester"}
MIN_INTERVAL_S = 1
DIRECT_INTERVAL_S = 600  # the direct path's session: the sensor (the fallback) launches nothing meanwhile
"""Dagster's sensor daemon evaluates sensors in a loop that runs at most every 5 s (MIN_INTERVAL_LOOP_TIME in
dagster/_daemon/sensor.py), skipping a sensor whose interval has not elapsed since its last tick: any interval
below 5 ticks on every loop; 5 itself can skip alternate loops when a loop starts a little early."""


def inputs(topic: str) -> dict[str, Any]:
    return {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": topic}}}}}


def record(instance: DagsterInstance, run_id: str) -> RunRecord:
    found = instance.get_run_record_by_id(run_id)
    assert found is not None, run_id
    return found


def requests(instance: DagsterInstance, run_id: str) -> dict[str, int]:
    """Agent requests per step of run `run_id` (its steps' `flujo/requests` output metadata)."""
    counts: dict[str, int] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        data = entry.dagster_event.step_output_data if entry.dagster_event else None
        value = data.metadata.get(names.REQUESTS) if data else None
        if value is not None and entry.step_key:
            counts[entry.step_key] = counts.get(entry.step_key, 0) + int(value.value)  # type: ignore[call-overload]
    return counts


def events(instance: DagsterInstance, *run_ids: str) -> tuple[int, int]:
    """(Dagster event records, log messages) in the event logs of `run_ids`."""
    entries = [e for run_id in run_ids for e in instance.all_logs(run_id)]
    dagster = sum(1 for e in entries if e.is_dagster_event)
    return dagster, len(entries) - dagster


def finished(dev: DagsterDev, run_id: str, status: DagsterRunStatus) -> DagsterRun:
    run = dev.wait_finished(run_id, timeout_s=120)
    if run.status != status:
        raise DagsterDevError(f"run {run_id} ended {run.status}, expected {status}:\n{dev.log_tail()}")
    return run


def latencies(dev: DagsterDev, reps: int) -> list[dict[str, Any]]:
    """Park `reps` runs, then decide on one at a time and time its resume (see the module docstring, (a))."""
    parked = [dev.launch("bench_park", inputs(f"bench-{i}"), tags=REQUESTER) for i in range(reps)]
    rows = []
    for run_id in parked:
        run = finished(dev, run_id, DagsterRunStatus.SUCCESS)  # a park is not a failure
        assert run.tags.get(names.PARKED_TAG) == "true", run.tags
        decided_at = time.time()
        decide(run_id, verdict="approve", by="ana", instance=dev.instance)
        resumed = dev.wait_child(run_id, timeout_s=120)
        finished(dev, resumed, DagsterRunStatus.SUCCESS)
        child = record(dev.instance, resumed)
        created = child.create_timestamp.timestamp()
        assert child.start_time is not None and child.end_time is not None
        rows.append(
            {
                "parked": run_id,
                "resumed": resumed,
                "sensor_s": created - decided_at,
                "queue_s": child.start_time - created,
                "run_s": child.end_time - child.start_time,
                "total_s": child.end_time - decided_at,
            }
        )
    return rows


def direct_latencies(dev: DagsterDev, reps: int) -> list[dict[str, Any]]:
    """Park `reps` runs, then decide on one at a time the direct way (`decide` + `resume_now`) and time its
    resume (see the module docstring, (a'))."""
    parked = [dev.launch("bench_park", inputs(f"direct-{i}"), tags=REQUESTER) for i in range(reps)]
    channel = Channel(dev.server.url)
    rows = []
    for run_id in parked:
        run = finished(dev, run_id, DagsterRunStatus.SUCCESS)
        assert run.tags.get(names.PARKED_TAG) == "true", run.tags
        decided_at = time.time()
        decide(run_id, verdict="approve", by="ana", instance=dev.instance)
        outcome = resume_now(dev.instance, run_id, server=channel, secret=None, resumed_by="benchmark")
        assert outcome.launched and outcome.resumed_run_id is not None, outcome.message
        finished(dev, outcome.resumed_run_id, DagsterRunStatus.SUCCESS)
        child = record(dev.instance, outcome.resumed_run_id)
        assert child.dagster_run.tags.get(names.RESUMED_BY_TAG) == "benchmark"  # the direct path launched it
        created = child.create_timestamp.timestamp()
        assert child.start_time is not None and child.end_time is not None
        rows.append(
            {
                "launch_s": created - decided_at,
                "queue_s": child.start_time - created,
                "run_s": child.end_time - child.start_time,
                "started_s": child.start_time - decided_at,
                "total_s": child.end_time - decided_at,
            }
        )
    return rows


def wait_for_retry(dev: DagsterDev, run_id: str, timeout_s: float = 60) -> None:
    """Block until the gate of run `run_id` has asked to be retried once (it is waiting)."""
    deadline = time.monotonic() + timeout_s
    while not dev.instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY):
        if time.monotonic() > deadline:
            raise DagsterDevError(f"the gate of run {run_id} did not wait within {timeout_s} s:\n{dev.log_tail()}")
        time.sleep(0.05)


def pause_events(dev: DagsterDev, parked: str, resumed: str) -> dict[str, tuple[int, int]]:
    """Event counts of the runs of (c): the park chain, a wait run, a pre-approved run of each job, and a
    `flujo_decide` run (a decision from the Launchpad)."""
    instance = dev.instance
    # a decision counts only on the run it was made for: no run can start with its gate approved, so the baseline
    # is one run of the same steps without the gate
    plain = dev.launch("bench_plain", inputs("bench-0"), tags=REQUESTER)
    finished(dev, plain, DagsterRunStatus.SUCCESS)

    waiting = dev.launch("bench_wait", inputs("bench-w"), tags=REQUESTER)
    wait_for_retry(dev, waiting)
    decide(waiting, verdict="approve", by="ana", instance=instance)
    finished(dev, waiting, DagsterRunStatus.SUCCESS)
    retries = instance.all_logs(waiting, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) == 1, [e.step_key for e in retries]

    launchpad = dev.launch("bench_park", inputs("bench-d"), tags=REQUESTER)
    finished(dev, launchpad, DagsterRunStatus.SUCCESS)  # parked
    config = {"run_id": launchpad, "decision": "approve", "by": "ana"}
    decision_run = dev.launch("flujo_decide", {"ops": {"flujo_decide": {"config": config}}})
    finished(dev, decision_run, DagsterRunStatus.SUCCESS)
    finished(dev, dev.wait_child(launchpad, timeout_s=120), DagsterRunStatus.SUCCESS)
    return {
        "baseline: the steps without the gate": events(instance, plain),
        "park: parked run + resumed run": events(instance, parked, resumed),
        "wait: one retry, then approved": events(instance, waiting),
        "a flujo_decide run (Launchpad)": events(instance, decision_run),
    }


def tick_spacing(dev: DagsterDev) -> list[float]:
    """Seconds between the approvals sensor's consecutive ticks so far."""
    ticks = sorted(t["timestamp"] for t in dev.sensor(SENSOR)["sensorState"]["ticks"])
    return [b - a for a, b in zip(ticks, ticks[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--interval", type=int, default=MIN_INTERVAL_S, help="the approvals sensor's interval (s)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        dagster_dev(Path(tmp) / "home", target=TARGET, interval_s=args.interval) as dev,
    ):
        rows = latencies(dev, args.reps)
        first = rows[0]
        before, after = requests(dev.instance, first["parked"]), requests(dev.instance, first["resumed"])
        counts = pause_events(dev, first["parked"], first["resumed"])
        spacing = tick_spacing(dev)
    with (
        tempfile.TemporaryDirectory() as tmp,
        dagster_dev(Path(tmp) / "home", target=TARGET, interval_s=DIRECT_INTERVAL_S) as dev,
    ):
        direct = direct_latencies(dev, args.reps)

    print(f"(a) decision -> resumed run SUCCESS; approvals sensor interval {args.interval} s; default queued run")
    print("    coordinator (the daemon dequeues every 5 s); decision written with decide(); sensor = decision ->")
    print("    resume created, queue = created -> started (dequeue + run worker start), run = started -> finished")
    print(f"{'rep':>5}  {'sensor':>7}  {'queue':>7}  {'run':>7}  {'total':>7}")
    for i, row in enumerate(rows, 1):
        cells = "  ".join(f"{row[k]:>6.2f}s" for k in ("sensor_s", "queue_s", "run_s", "total_s"))
        print(f"{i:>5}  {cells}")
    p50 = statistics.median(r["total_s"] for r in rows)
    ticks = statistics.median(spacing)
    print(f"median {p50:.2f} s; the sensor ticked every {ticks:.2f} s (median of {len(spacing)} gaps)")
    print("(a') decided the direct way (decide + resume_now, as the inbox and the CLI do); sensor every")
    print(f"    {DIRECT_INTERVAL_S} s (it launches none); launch = decision -> resume created (queued)")
    print(f"{'rep':>5}  {'launch':>7}  {'queue':>7}  {'run':>7}  {'total':>7}")
    for i, row in enumerate(direct, 1):
        cells = "  ".join(f"{row[k]:>6.2f}s" for k in ("launch_s", "queue_s", "run_s", "total_s"))
        print(f"{i:>5}  {cells}")
    launched = statistics.median(r["launch_s"] for r in direct)
    started = statistics.median(r["started_s"] for r in direct)
    succeeded = statistics.median(r["total_s"] for r in direct)
    by_sensor = statistics.median(r["sensor_s"] for r in rows)
    print(
        f"median: launched {launched:.2f} s (sensor path: {by_sensor:.2f} s), started {started:.2f} s, "
        f"succeeded {succeeded:.2f} s (sensor path: {p50:.2f} s)"
    )
    print("(b) agent requests (flujo/requests metadata): before = the parked run, after = its resume")
    print(f"    before: {sum(before.values())} {sorted(before)}")
    print(f"    after:  {sum(after.values())} {sorted(after)}")
    print("(c) events one pause adds = Dagster event records of the runs that took one input through the gate,")
    print("    minus those of one run of the same steps without the gate (a decision binds to the run it was made")
    print("    on); in-process executor (flujo's default); decision by decide(); sensor ticks are")
    print("    stored apart from the event log and not counted; a Launchpad decision adds a flujo_decide run")
    print(f"    {'runs':<34} {'events':>6}  log messages")
    for name, (dagster, messages) in counts.items():
        print(f"    {name:<34} {dagster:>6}  {messages}")
    park = counts["park: parked run + resumed run"][0] - counts["baseline: the steps without the gate"][0]
    wait = counts["wait: one retry, then approved"][0] - counts["baseline: the steps without the gate"][0]
    launchpad = counts["a flujo_decide run (Launchpad)"][0]
    print(
        f"    one pause adds {park} events parked (+{launchpad} with a Launchpad decision), "
        f"{wait} waiting through one retry"
    )
    summary = {
        "bench": "approvals",
        "decision_to_resumed_p50_s": round(p50, 2),
        "sensor_decision_to_launched_p50_s": round(by_sensor, 2),
        "direct_decision_to_resumed_p50_s": round(launched, 2),
        "direct_decision_to_started_p50_s": round(started, 2),
        "direct_decision_to_succeeded_p50_s": round(succeeded, 2),
        "sensor_interval_s": args.interval,
        "sensor_tick_spacing_p50_s": round(ticks, 2),
        "requests_before": sum(before.values()),
        "requests_after": sum(after.values()),
        "events_per_pause_park": park,
        "events_per_pause_wait": wait,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
