"""Every placement of an approval gate under up to three containers (1 + 10 + 100 + 1000 placements): refused
when the definitions load (HITL-NESTED-001, naming the gate's path) exactly where a resume would run completed
work again, and otherwise parked, approved and resumed until the run succeeds, with each model request made
once. Plus the two placements that park several gates in one run: Parallel branches and Map elements."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    build_reconstructable_job,
    execute_job,
    instance_for_test,
    reconstructable,
)
from pydantic import BaseModel, Field

from flujo_dagster import (
    Approval,
    ConfigurationError,
    Map,
    Parallel,
    Pipeline,
    agent_step,
    build_definitions,
    load_final_context,
    step,
)
from flujo_dagster.adapter.control.approvals import decide, pending, resume
from flujo_dagster.names import AWAITING_PREFIX
from tests.placement_defs import (
    GATE,
    KINDS,
    REQUEST_LOG,
    UNKNOWN_OK,
    Doc,
    container_name,
    kinds_of,
    pipeline_name,
    placement_id,
    placement_pipeline,
    runtime,
    writer,
)

INPUTS = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}
PLACEMENTS = [placement_id(k) for depth in range(4) for k in itertools.product(KINDS, repeat=depth)]


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


@pytest.fixture(scope="module")
def shared_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterInstance]:
    """One persistent SQLite instance for every resumable placement (each chain has its own runs): creating
    one per placement would cost a quarter of a second each."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance


# -- the expected verdict and outcome, from the placement alone ------------------------------------------------
ONE_OP = {"loop-inline", "branch-inline", "parallel", "map", "group-inline"}


def refused_at(kinds: tuple[str, ...]) -> int | None:
    """The outermost container that runs in one op (None: the gate can resume). In the body of an expanded
    Map only groups stay expanded."""
    in_map = False
    for index, kind in enumerate(kinds):
        if kind in ONE_OP or (in_map and kind != "group"):
            return index
        in_map = in_map or kind == "map-expanded"
    return None


def node_path(kinds: tuple[str, ...]) -> list[str]:
    """The validator's path of each container, e.g. `p_... > loop:l1 > branch:b2`."""
    parts = [pipeline_name(placement_id(kinds))]
    for depth, kind in enumerate(kinds, start=1):
        parts.append(f"{kind.split('-')[0]}:{container_name(kind, depth)}")
    return [" > ".join(parts[: i + 1]) for i in range(len(parts))]


def expected_run(kinds: tuple[str, ...]) -> tuple[Doc, list[str], list[str]]:
    """The final context, the model prompts (one per loop iteration that ran and per element) and the gate ids
    (op name, and `[i<k>]` for the element of an expanded Map) of a resumable placement."""
    prompts: list[str] = []
    gates: list[str] = []

    def run(depth: int, state: dict[str, object], names: list[str], element: str) -> str:
        if depth == len(kinds):  # write, review, publish
            prompt = f"Write about otters ({state['x']})"
            prompts.append(prompt)
            gates.append("__".join([*names, GATE]) + element)
            state["draft"] = f"draft: {prompt}"
            state["published"] = f"published: {state['draft']}"
            return "published"
        kind, name = kinds[depth], container_name(kinds[depth], depth + 1)
        if kind == "loop":
            return run(depth + 1, state, [*names, name, "i1"], element)
        if kind == "parallel-expanded":
            state[f"side{depth + 1}"] = "side of otters"
            return run(depth + 1, state, [*names, name, "a"], element)
        if kind == "map-expanded":
            results = []
            for index, x in enumerate(["a", "b"]):
                inner = {**state, "x": x}
                results.append(inner[run(depth + 1, inner, [*names, name], f"[i{index}]")])
            state[f"out{depth + 1}"] = results
            return f"out{depth + 1}"
        return run(depth + 1, state, [*names, name], element)  # branch (takes the gate's arm), group

    state: dict[str, object] = Doc(topic="otters").model_dump()
    run(0, state, [], "")
    return Doc.model_validate(state), prompts, gates


# -- the placements ------------------------------------------------------------------------------------------
def test_there_are_1111_placements_and_112_of_them_resume() -> None:
    assert len(PLACEMENTS) == len(set(PLACEMENTS)) == 1 + 10 + 100 + 1000
    assert sum(refused_at(kinds_of(p)) is None for p in PLACEMENTS) == 112


@pytest.mark.parametrize("pid", PLACEMENTS, ids=PLACEMENTS)
def test_gate_placement(pid: str, request: pytest.FixtureRequest) -> None:
    """Refused placements need no instance (the definitions do not load); resumable ones run their chain."""
    kinds = kinds_of(pid)
    where = refused_at(kinds)
    paths = node_path(kinds)
    gate_path = f"{paths[-1]} > approval:{GATE}"
    if where is not None:
        with pytest.raises(ConfigurationError) as raised:
            build_definitions(pipelines=[placement_pipeline(pid)])
        (finding,) = raised.value.findings  # nothing else is wrong with the pipeline
        assert (finding.code, finding.path) == ("HITL-NESTED-001", gate_path)
        assert f": {paths[where + 1]} runs in one op" in finding.message  # the outermost one-op container
        return
    context, prompts, gates = expected_run(kinds)
    instance: DagsterInstance = request.getfixturevalue("shared_instance")
    requests: Path = request.getfixturevalue("requests")
    job = build_reconstructable_job("tests.placement_defs", "placement_job", reconstructable_args=(pid,))
    with execute_job(job, instance=instance, run_config=INPUTS, raise_on_error=False) as result:
        run_id = result.run_id
    rounds: list[list[str]] = []  # the gates each run of the chain parked at
    for _ in range(len(gates) + 1):
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS  # a park is not a failure
        if run.tags.get("flujo/parked") != "true":
            break
        waiting = sorted(
            k.removeprefix(AWAITING_PREFIX)
            for k, v in run.tags.items()
            if k.startswith(AWAITING_PREFIX) and v == "pending"
        )
        assert waiting, f"run {run_id} failed without parking"
        for gate in waiting:
            decide(run_id, gate=gate, verdict="approve", by="ana", instance=instance)
        rounds.append(waiting)
        run_id = resume(run_id, job=job, instance=instance)
    assert rounds == [sorted(gates)]  # every gate (each element's) parked in the first run; one resume
    assert load_final_context(placement_pipeline(pid), run_id, instance=instance) == context
    assert sorted(requests.read_text().splitlines()) == sorted(prompts)  # no model request repeated


# -- several gates parked in one run, decided one by one -----------------------------------------------------
class Post(BaseModel):
    topic: str
    draft: str = ""
    legal: str = ""
    style: str = ""
    published: str = ""
    xs: list[str] = Field(default_factory=lambda: ["a", "b", "c"])
    x: str = ""
    posts: list[str] = Field(default_factory=list)


class Edit(BaseModel):
    draft: str


@step(name="publish", output_keys=["published"])
def publish(draft: str) -> str:
    return f"published: {draft}"


# cache=False: the tests count the requests of every run
write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft", cache=False)
write_each = agent_step("write", agent=writer, prompt="Write about {topic} {x}", output_key="draft", cache=False)


@step(name="publish", output_keys=["published"])
def publish_each(draft: str, x: str, topic: str) -> str:
    """Reads, after the gate, the element and a key from before the Map besides the gate's own `draft`."""
    return f"{topic}/{x}: {draft}"


legal = agent_step("legal_check", agent=writer, prompt="Check legal {draft}", output_key="legal", cache=False)
style = agent_step("style_check", agent=writer, prompt="Check style {draft}", output_key="style", cache=False)
reviews = Pipeline(
    "reviews",
    context=Post,
    steps=[
        write,
        Parallel(
            "review",
            branches={
                "legal": [legal, Approval("legal_ok", show=["legal"])],
                "style": [style, Approval("style_ok", show=["style"])],
            },
            inline=False,
        ),
        publish,  # reads only `draft`, from before the Parallel: waits for both gates anyway
    ],
)
per_element = Pipeline(
    "per_element",
    context=Post,
    steps=[
        Map(
            "each",
            over="xs",
            item="x",
            body=[write_each, Approval("review", show=["draft"], decision=Edit), publish_each],
            result="published",
            into="posts",
            inline=False,
        ),
        step(name="announce", output_keys=["published"])(lambda topic: f"announced {topic}"),
    ],
)
defs = build_definitions(
    pipelines=[reviews, per_element], resources={"agent_runtime": runtime, "approval_settings": UNKNOWN_OK}
)


def reviews_job() -> JobDefinition:
    return defs.resolve_job_def("reviews")


def per_element_job() -> JobDefinition:
    return defs.resolve_job_def("per_element")


def started(instance: DagsterInstance, run_id: str) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if e.step_key}


def parked_at(instance: DagsterInstance, run_id: str) -> list[str]:
    return sorted(p.gate for p in pending(instance=instance) if p.run_id == run_id)


def test_gates_in_parallel_branches_park_together_and_are_decided_separately(
    instance: DagsterInstance, requests: Path
) -> None:
    job = reconstructable(reviews_job)
    with execute_job(job, instance=instance, run_config=INPUTS, raise_on_error=False) as first:
        assert first.success  # parked: a park is not a failure
    gates = ["review__legal__legal_ok", "review__style__style_ok"]
    assert parked_at(instance, first.run_id) == gates
    assert "publish" not in started(instance, first.run_id)
    # the barrier runs (a fan-in runs when any source produced), holds while a gate is parked, and produces nothing
    produced = {e.step_key for e in instance.all_logs(first.run_id, of_type=DagsterEventType.STEP_OUTPUT)}
    assert not produced & {"review__flujo_join", "publish", "flujo_context"}

    decide(first.run_id, gate=gates[0], verdict="approve", by="ana", instance=instance)
    second = resume(first.run_id, job=job, instance=instance)
    assert parked_at(instance, second) == gates[1:]  # parked again at the gate still undecided
    # the barrier and the final context hold (nothing after them runs) while a gate before them is parked
    assert started(instance, second) == {*gates, "review__flujo_join", "flujo_context"}
    assert instance.get_run_by_id(second).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]

    decide(second, gate=gates[1], verdict="approve", by="bo", instance=instance)
    third = resume(second, job=job, instance=instance)
    assert instance.get_run_by_id(third).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert started(instance, third) == {gates[1], "review__flujo_join", "publish", "flujo_context"}
    assert sorted(requests.read_text().splitlines()) == [
        "Check legal draft: Write about otters",
        "Check style draft: Write about otters",
        "Write about otters",
    ]
    final = load_final_context(reviews, third, instance=instance)
    assert final == Post(
        topic="otters",
        draft="draft: Write about otters",
        legal="draft: Check legal draft: Write about otters",
        style="draft: Check style draft: Write about otters",
        published="published: draft: Write about otters",
    )


def test_each_element_of_an_expanded_map_has_its_own_gate(instance: DagsterInstance, requests: Path) -> None:
    job = reconstructable(per_element_job)
    with execute_job(job, instance=instance, run_config=INPUTS, raise_on_error=False) as first:
        assert first.success  # parked: a park is not a failure
    gates = ["each__review[i0]", "each__review[i1]", "each__review[i2]"]
    assert parked_at(instance, first.run_id) == gates
    assert sorted(p.path for p in pending(instance=instance)) == [
        f"per_element > map:each > approval:review [i{i}]" for i in range(3)
    ]
    assert not started(instance, first.run_id) & {"each__flujo_collect", "announce"}

    decide(first.run_id, gate=gates[1], verdict="approve", by="ana", values={"draft": "edited"}, instance=instance)
    second = resume(first.run_id, job=job, instance=instance)
    assert parked_at(instance, second) == [gates[0], gates[2]]
    # only the elements that parked; the collect and the final context hold again
    assert started(instance, second) == {*gates, "each__publish[i1]", "each__flujo_collect", "flujo_context"}
    # Dagster would collect the one element that produced; the collect holds instead, and nothing after it runs
    collected = instance.all_logs(second, of_type=DagsterEventType.STEP_OUTPUT)
    assert not {e.step_key for e in collected} & {"each__flujo_collect", "announce", "flujo_context"}

    for gate in (gates[0], gates[2]):
        decide(second, gate=gate, verdict="approve", by="ana", instance=instance)
    third = resume(second, job=job, instance=instance)
    assert instance.get_run_by_id(third).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert started(instance, third) == {
        gates[0],
        gates[2],
        "each__publish[i0]",
        "each__publish[i2]",
        "each__flujo_collect",
        "announce",
        "flujo_context",
    }
    assert sorted(requests.read_text().splitlines()) == [f"Write about otters {x}" for x in "abc"]
    final = load_final_context(per_element, third, instance=instance)
    assert final is not None and final.posts == [  # type: ignore[attr-defined]
        "otters/a: draft: Write about otters a",
        "otters/b: edited",
        "otters/c: draft: Write about otters c",
    ]
    assert final.published == "announced otters"  # type: ignore[attr-defined]


def test_gates_in_sequence_in_a_mapped_body_compile() -> None:
    """Per-element outputs cannot feed Dagster fan-ins: what the steps after the second gate read from
    before it (the element, `draft` from the first gate) is ordered by their own dependencies only."""
    body = [write_each, Approval("review", show=["draft"]), Approval("sign_off", show=["topic"]), publish_each]
    twice = Pipeline(
        "twice",
        context=Post,
        steps=[Map("each", over="xs", item="x", body=body, result="published", into="posts", inline=False)],
    )
    resources = {"agent_runtime": runtime, "approval_settings": UNKNOWN_OK}
    job = build_definitions(pipelines=[twice], resources=resources).resolve_job_def("twice")
    assert {"each__review", "each__sign_off", "each__publish", "each__flujo_collect"} <= set(job.graph.node_names())
