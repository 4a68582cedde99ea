"""The example code location under a real `dagster dev` (webserver, daemon, code server): a run of `gated_digest`
(an approval gate inside a loop) launched through GraphQL parks at each iteration's gate; a reviewer records each
decision with the `flujo_decide` job, launched through GraphQL; the `flujo_approvals` sensor, run by the daemon and
aimed at this webserver through FLUJO_DAGSTER_WEBSERVER_URL, resumes the chain until it succeeds, without any step
running twice. Also: how `build_definitions` reads the sensor's settings from the environment."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from definitions.gated import GatedDigest, gated
from flujo_dagster import ConfigurationError, build_definitions, load_final_context
from flujo_dagster.adapter.control.approvals import pending
from flujo_dagster.adapter.control.run_costs import run_cost_tags
from flujo_dagster.config import APPROVALS_INTERVAL_ENV, WEBSERVER_URL_ENV
from flujo_dagster.names import RUN_CALLS_TAG, RUN_COST_TAG, RUN_COST_TAGS, RUN_TOKENS_TAG
from tests.approval_defs import gated as small_gated
from tests.dagster_dev import DagsterDev, dagster_dev, group_members, leftovers

JOB = "gated_digest"
INPUTS = {"ops": {"gated_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "python"}}}}}}}
"""One source matches "python": the offline critic says revise, so the loop runs both iterations (two gates)."""
EDITS = ["Signed-off draft, round 1.", "Signed-off draft, round 2: one source, Event loops and worker threads."]


def _decide(dev: DagsterDev, run_id: str, gate: str, draft: str) -> None:
    """Approve `gate` of parked run `run_id` with an edited draft, from the Launchpad (the `flujo_decide` job)."""
    config = {"run_id": run_id, "gate": gate, "decision": "approve", "by": "ana", "values": {"draft": draft}}
    decide_run = dev.launch("flujo_decide", {"ops": {"flujo_decide": {"config": config}}})
    decided = dev.wait_finished(decide_run)
    assert decided.status == DagsterRunStatus.SUCCESS, dev.log_tail()


def _events(dev: DagsterDev, run_ids: list[str], kind: DagsterEventType) -> Counter[str]:
    return Counter(e.step_key for r in run_ids for e in dev.instance.all_logs(r, of_type=kind) if e.step_key)


def _requests(dev: DagsterDev, run_ids: list[str]) -> Counter[str]:
    """Agent requests per step key, from the `flujo/requests` output metadata of every run."""
    counts: Counter[str] = Counter()
    for run_id in run_ids:
        for entry in dev.instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
            data = entry.dagster_event.step_output_data if entry.dagster_event else None
            value: Any = data.metadata.get("flujo/requests") if data else None
            if value is not None and entry.step_key:
                counts[entry.step_key] += int(value.value)
    return counts


def test_a_gate_in_a_loop_parks_and_resumes_under_dagster_dev(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = time.monotonic()
    with dagster_dev(home, interval_s=1) as dev:
        pgid = dev.pgid
        sensor = dev.sensor("flujo_approvals")
        assert (sensor["minIntervalSeconds"], sensor["sensorState"]["status"]) == (1, "RUNNING")  # from the env
        first = dev.launch(JOB, INPUTS, tags={"dagster/user": "requester"})
        chain, gates = [first], []
        run = dev.wait_finished(first)
        while run.status == DagsterRunStatus.SUCCESS and run.tags.get("flujo/parked") == "true":  # not a failure
            (waiting,) = [p for p in pending(instance=dev.instance) if p.run_id == run.run_id]
            gates.append(waiting.gate)
            _decide(dev, run.run_id, waiting.gate, EDITS[len(gates) - 1])
            resumed = dev.wait_child(run.run_id)  # launched by the sensor through this webserver's GraphQL
            chain.append(resumed)
            run = dev.wait_finished(resumed)
        assert run.status == DagsterRunStatus.SUCCESS, dev.log_tail()
        # the daemon recorded each tick that resumed a run as SUCCESS naming it (the UI's "Targeted Runs" of the
        # tick), not as "skipped", and no tick failed
        # (the newest tick may still be in flight: the daemon records it STARTED until it ends)
        ticks = dev.sensor("flujo_approvals")["sensorState"]["ticks"]
        ended = ticks[1:] if ticks and ticks[0]["status"] == "STARTED" else ticks
        assert sorted(i for t in ticks if t["status"] == "SUCCESS" for i in t["originRunIds"]) == sorted(chain[1:])
        assert {t["status"] for t in ended} <= {"SUCCESS", "SKIPPED"}, ticks
        for child in chain[1:]:  # the UI shows "Launched by: flujo_approvals"
            assert dev.instance.get_run_by_id(child).tags["dagster/sensor_name"] == "flujo_approvals"  # type: ignore[union-attr]
        assert gates == ["revise__i1__sign_off", "revise__i2__sign_off"]  # the gate parked in each iteration
        for parent, child in pairwise(chain):
            tags = dev.instance.get_run_by_id(child).tags  # type: ignore[union-attr]
            assert (tags["dagster/parent_run_id"], tags["dagster/root_run_id"]) == (parent, first)
            assert tags["dagster/user"] == "requester"  # inherited; "ana" approved
        assert dev.instance.get_run_by_id(first).tags["flujo/awaiting/revise__i1__sign_off"] == "resumed"  # type: ignore[union-attr]

        context = load_final_context(gated, run.run_id, instance=dev.instance)
        assert isinstance(context, GatedDigest)
        assert context.draft == EDITS[1]  # the last approval's edit flowed on to the critic and the report
        assert [s.id for s in context.sources] == ["s6"]
        assert context.critique is not None and context.critique.verdict == "revise"
        assert context.report is not None and context.report.startswith(f"# Digest: python\n\n{EDITS[1]}\n")

        step = f"{JOB}_graph."
        produced = Counter(k for r in chain for k in set(_events(dev, [r], DagsterEventType.STEP_OUTPUT)))
        starts = _events(dev, chain, DagsterEventType.STEP_START)
        assert max(produced.values()) == 1, produced  # no step produced outputs twice across the chain
        held = {f"{step}revise__flujo_join", f"{step}flujo_context"}  # held while a gate was parked, in both parks
        for key, count in starts.items():  # gates start once per park plus once to pass; the rest once
            assert count == (2 if key.endswith("__sign_off") else 3 if key in held else 1), (key, count)
        assert {f"{step}sources", f"{step}revise__i2__critique", f"{step}report", f"{step}flujo_context"} <= set(
            produced
        )
        assert _requests(dev, chain) == {  # one model request per agent step per iteration, none repeated
            f"{step}revise__i1__draft": 1,
            f"{step}revise__i1__critique": 1,
            f"{step}revise__i2__draft": 1,
            f"{step}revise__i2__critique": 1,
        }
        assert _requests(dev, [first]) == {f"{step}revise__i1__draft": 1}  # before the first pause: the draft only
        # the daemon's flujo_costs sensor tags every run of the chain (parked ones too) with its own usage
        tagged = [dev.wait_tagged(r, RUN_COST_TAG) for r in chain]  # resumes inherit no cost tag from their parent
        assert [{k: r.tags[k] for k in RUN_COST_TAGS} for r in tagged] == [
            run_cost_tags(dev.instance, r) for r in chain
        ]
        assert sum(int(r.tags[RUN_CALLS_TAG]) for r in tagged) == 4  # each agent call counted in one run only
        assert tagged[0].tags[RUN_CALLS_TAG] == "1" and Decimal(tagged[0].tags[RUN_COST_TAG]) > 0
        assert all(int(r.tags[RUN_TOKENS_TAG]) > 0 for r in tagged)
    assert leftovers(home) == [] and group_members(pgid) == []
    gone = subprocess.run(["pgrep", "-f", f"dagster.*{dev.server.url.rsplit(':', 1)[1]}"], check=False)
    assert gone.returncode == 1  # pgrep found no process naming this dagster dev's port
    print(f"dagster dev: boot, two parks and resumes, shutdown in {time.monotonic() - started:.1f} s")


def test_the_sensor_reads_its_webserver_and_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def sensor_of(**kwargs: Any) -> tuple[int | None, str]:
        found = build_definitions(pipelines=[small_gated], **kwargs).resolve_sensor_def("flujo_approvals")
        return found.minimum_interval_seconds, found.description or ""

    monkeypatch.delenv(WEBSERVER_URL_ENV, raising=False)
    monkeypatch.delenv(APPROVALS_INTERVAL_ENV, raising=False)
    assert sensor_of() == (30, sensor_of()[1]) and "http://127.0.0.1:3000" in sensor_of()[1]  # the defaults
    monkeypatch.setenv(WEBSERVER_URL_ENV, "http://127.0.0.1:3111/")
    monkeypatch.setenv(APPROVALS_INTERVAL_ENV, "2")
    interval, description = sensor_of()
    assert interval == 2 and "http://127.0.0.1:3111." in description
    interval, description = sensor_of(
        webserver_url="http://dagster:80", approvals_interval=timedelta(seconds=45)
    )  # arguments win
    assert interval == 45 and "http://dagster:80." in description

    for name, value, message in [
        (APPROVALS_INTERVAL_ENV, "soon", f"{APPROVALS_INTERVAL_ENV}='soon' is not a whole number of seconds"),
        (APPROVALS_INTERVAL_ENV, "0", f"{APPROVALS_INTERVAL_ENV}='0' must be a whole number of seconds, at least 1"),
        (WEBSERVER_URL_ENV, "127.0.0.1:3000", f"{WEBSERVER_URL_ENV}='127.0.0.1:3000' is not an http(s) URL"),
    ]:
        with monkeypatch.context() as patched:
            patched.setenv(name, value)
            with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
                sensor_of()
    monkeypatch.setenv(APPROVALS_INTERVAL_ENV, "soon")
    plain = build_definitions(pipelines=[])  # no gate: the variables are not read, nor is the sensor added
    assert "flujo_approvals" not in {s.name for s in plain.sensors or []}
