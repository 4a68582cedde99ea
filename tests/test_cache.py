"""The shared agent-call cache (docs/cache.md): a re-materialization with unchanged inputs makes no model request
(expanded and inline steps alike), reserves nothing in the budget ledger, and says so in the steps' metadata and
in `flujo-dagster costs`; `cache=False` and an expired entry make fresh requests; a corrupt entry is a miss;
identical concurrent calls, in two threads or two processes, make one request; the PostgreSQL store behaves as
the SQLite one."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from dagster import DagsterEventType, DagsterInstance, ReexecutionOptions, execute_job, reconstructable
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Cache, Group, Pipeline, Price, agent_step, run_pipeline
from flujo_dagster.adapter.control.calls import run_calls
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.adapter.storage.call_cache import InstanceCallCache
from flujo_dagster.adapter.storage.call_cache_postgres import PostgresCallCache
from flujo_dagster.adapter.storage.call_cache_sql import SqlCallCache, SqliteCallCache
from flujo_dagster.cli import main
from flujo_dagster.errors import ConfigurationError, StorageError
from flujo_dagster.names import CACHE_HITS, SAVED_COST_USD
from flujo_dagster.runtime.cache import CachedModel, CacheUse, claim_owner, request_key
from tests import claim_defs
from tests.cache_workers import call_once

POSTGRES_URL = os.environ.get("FLUJO_TEST_POSTGRES_URL", "")
SETTINGS = {"max_tokens": 1_000}
PRICE = Price(input_per_mtok=0, output_per_mtok=1_000)
"""$0.001 per output token: each answer (100 output tokens) costs $0.1."""
Store = tuple[SqlCallCache[object], list[float]]
AGENT = Agent("openai:gpt-5-mini", defer_model_check=True)


class Doc(BaseModel):
    topic: str
    outline: str = ""
    draft: str = ""
    notes: str = ""


def prompt_of(messages: list[ModelMessage]) -> str:
    return next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))


def counting(requests: list[str]) -> FunctionModel:
    """Answers `answer to <prompt>` with 40 input and 100 output tokens, recording each request's prompt."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(prompt_of(messages))
        usage = RequestUsage(input_tokens=40, output_tokens=100)
        return ModelResponse(parts=[TextPart(f"answer to {prompt_of(messages)}")], usage=usage)

    return FunctionModel(answer, model_name="metered")


def doc_pipeline(*, cache: Cache | bool | None = None, notes_cache: Cache | bool | None = None) -> Pipeline[Doc]:
    """Two expanded agent steps, then one inside an inline group; every key an asset; a budget on the pipeline."""
    outline = agent_step("outline", agent=AGENT, prompt="Outline {topic}", model_settings=SETTINGS)
    draft = agent_step("draft", agent=AGENT, prompt="Draft from {outline}", model_settings=SETTINGS)
    notes = agent_step("notes", agent=AGENT, prompt="Notes on {draft}", model_settings=SETTINGS, cache=notes_cache)
    return Pipeline(
        "doc",
        context=Doc,
        steps=[outline, draft, Group("review", steps=[notes], inline=True)],
        assets=["outline", "draft", "notes"],
        budget=Budget(max_cost_usd=Decimal(10)),
        cache=cache,
    )


def runtime(requests: list[str]) -> AgentRuntime:
    return AgentRuntime(model=counting(requests), prices={"function:metered": PRICE})


def materializations(instance: DagsterInstance, run_id: str) -> set[str]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.event_specific_data.materialization.asset_key.to_user_string() for e in events}  # type: ignore[union-attr]


def output_metadata(instance: DagsterInstance, run_id: str) -> list[dict[str, object]]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
    return [
        {k: v.value for k, v in e.dagster_event.step_output_data.metadata.items()}  # type: ignore[union-attr]
        for e in events
    ]


def test_a_full_rematerialization_with_unchanged_inputs_makes_no_model_request(
    instance: DagsterInstance, dagster_home: Path
) -> None:
    requests: list[str] = []
    resources = {"agent_runtime": runtime(requests)}
    first = run_pipeline(doc_pipeline(), {"topic": "owls"}, instance=instance, resources=resources)
    assert first.success and len(requests) == 3
    second = run_pipeline(doc_pipeline(), {"topic": "owls"}, instance=instance, resources=resources)
    assert second.success
    assert len(requests) == 3  # the re-materialization made no request
    assert second.context == first.context and second.context.notes.startswith("answer to Notes on answer to")
    assert materializations(instance, second.run_id) == materializations(instance, first.run_id)
    assert {"doc/outline", "doc/draft", "doc/notes"} <= materializations(instance, second.run_id)
    ledger = InstanceLedger().for_instance(instance)
    assert len(ledger.entries(run_id=first.run_id)) == 3
    assert ledger.entries(run_id=second.run_id) == []  # a hit reserves nothing
    calls = second.agent_calls
    assert [(c.requests, c.cost_usd, c.cache_hits, c.saved_cost_usd) for c in calls] == [
        (0, Decimal(0), 1, Decimal("0.1"))
    ] * 3
    hits = [m for m in output_metadata(instance, second.run_id) if CACHE_HITS in m]
    assert hits and all(m[CACHE_HITS] == 1 and m[SAVED_COST_USD] == pytest.approx(0.1) for m in hits)
    assert len({m["flujo/step_path"] for m in hits}) == 3  # the two expanded steps and the inline op
    assert not any(CACHE_HITS in m for m in output_metadata(instance, first.run_id))
    records = [c.record["cache"] for run in (first, second) for c in run_calls(run.run_id, instance=instance).calls]
    assert records == ["miss"] * 3 + ["hit"] * 3  # the call records say so too
    result = CliRunner().invoke(main, ["costs", second.run_id], env={"DAGSTER_HOME": str(dagster_home)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.endswith("cache  [cache: 1 hit(s), saved $0.100000]") for line in lines[1:4]] == [True] * 3
    assert lines[-2].startswith("total: $0.000000, 0 input / 0 output tokens, 3 agent step(s)")
    assert lines[-1] == "call cache: 3 request(s) served from the cache, $0.300000 saved"


def test_fresh_answers_for_a_step_or_a_pipeline_that_asks(instance: DagsterInstance) -> None:
    requests: list[str] = []
    resources = {"agent_runtime": runtime(requests)}
    for _ in range(2):
        assert run_pipeline(doc_pipeline(notes_cache=False), {"topic": "owls"}, instance=instance, resources=resources)
    assert [r.split()[0] for r in requests] == ["Outline", "Draft", "Notes", "Notes"]  # only the fresh step again
    requests.clear()
    for _ in range(2):
        assert run_pipeline(doc_pipeline(cache=False), {"topic": "owls"}, instance=instance, resources=resources)
    assert len(requests) == 6
    requests.clear()
    off_but_step_on = doc_pipeline(cache=False, notes_cache=Cache())
    for _ in range(2):
        run_pipeline(off_but_step_on, {"topic": "owls"}, instance=instance, resources=resources)
    assert [r.split()[0] for r in requests] == ["Outline", "Draft", "Notes", "Outline", "Draft"]  # the step's wins


def test_an_expired_entry_makes_a_fresh_request(instance: DagsterInstance, tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = SqliteCallCache(tmp_path / "cache.sqlite", clock=lambda: now[0])
    requests: list[str] = []
    resources = {"agent_runtime": runtime(requests), "call_cache": store}
    pipeline = doc_pipeline(cache=Cache(ttl=timedelta(hours=1)))
    run_pipeline(pipeline, {"topic": "owls"}, instance=instance, resources=resources)
    now[0] += 3_599
    run_pipeline(pipeline, {"topic": "owls"}, instance=instance, resources=resources)
    assert len(requests) == 3  # younger than the ttl: served
    now[0] += 2
    run_pipeline(pipeline, {"topic": "owls"}, instance=instance, resources=resources)
    assert len(requests) == 6  # older: asked again, and stored again
    run_pipeline(pipeline, {"topic": "owls"}, instance=instance, resources=resources)
    assert len(requests) == 6


@pytest.mark.parametrize("bad", ["{not json", '{"parts": "nope"}', '{"kind": "request", "parts": []}'])
def test_a_corrupt_entry_is_a_miss_and_is_overwritten(instance: DagsterInstance, bad: str) -> None:
    requests: list[str] = []
    resources = {"agent_runtime": runtime(requests)}
    first = run_pipeline(doc_pipeline(), {"topic": "owls"}, instance=instance, resources=resources)
    path = Path(instance.storage_directory()) / "flujo" / "call_cache.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE flujo_call_cache SET value = ?", (bad,))
    second = run_pipeline(doc_pipeline(), {"topic": "owls"}, instance=instance, resources=resources)
    assert second.success and second.context == first.context
    assert len(requests) == 6  # every entry was a miss, never an error
    third = run_pipeline(doc_pipeline(), {"topic": "owls"}, instance=instance, resources=resources)
    assert third.success and len(requests) == 6  # the fresh answers replaced them


def test_the_key_holds_model_settings_messages_schema_and_tools_but_no_timestamps() -> None:
    params = ModelRequestParameters()
    messages: list[ModelMessage] = [ModelRequest(parts=[UserPromptPart("hello")])]
    again: list[ModelMessage] = [ModelRequest(parts=[UserPromptPart("hello")])]  # another timestamp
    key = request_key("openai:gpt-5", {"temperature": 0.0}, messages, params)
    assert key is not None and key == request_key("openai:gpt-5", {"temperature": 0.0}, again, params)
    tool = ToolDefinition(name="lookup", parameters_json_schema={"type": "object", "properties": {}})
    others = [
        request_key("openai:gpt-5-mini", {"temperature": 0.0}, messages, params),
        request_key("openai:gpt-5", {"temperature": 0.5}, messages, params),
        request_key("openai:gpt-5", {"temperature": 0.0}, [ModelRequest(parts=[UserPromptPart("hi")])], params),
        request_key("openai:gpt-5", {"temperature": 0.0}, messages, ModelRequestParameters(function_tools=[tool])),
        request_key("openai:gpt-5", {"temperature": 0.0}, messages, ModelRequestParameters(output_tools=[tool])),
        request_key("openai:gpt-5", {"temperature": 0.0}, messages, params, step="p > loop:l > i2 > agent:a"),
    ]
    assert len({key, *others}) == 7


def test_a_policy_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cache must be a Cache, True, False or None, got str"):
        agent_step("x", agent=AGENT, prompt="hi", cache="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Cache ttl must be positive"):
        Cache(ttl=timedelta(0))


def cached_call(store: SqlCallCache[object], model: FunctionModel, prompt: str) -> tuple[str, CachedModel]:
    cached = CachedModel(model, cache=CacheUse(store, Cache()), path="t", saved=lambda m, r: Decimal(0))
    result = anyio.run(Agent(cached).run, prompt)  # closes its event loop (run_sync in a thread leaves one open)
    return str(result.output), cached


def test_concurrent_identical_calls_in_threads_make_one_request_and_a_failure_hands_over(tmp_path: Path) -> None:
    store = SqliteCallCache(tmp_path / "cache.sqlite")
    made: list[str] = []
    fail_first = [True]

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        made.append(prompt_of(messages))
        await anyio.sleep(0.3)
        if prompt_of(messages) == "flaky" and fail_first[0]:
            fail_first[0] = False
            raise RuntimeError("provider down")
        return ModelResponse(parts=[TextPart(f"answer to {prompt_of(messages)}")])

    model = FunctionModel(answer, model_name="threads")
    for prompt, expected_requests in (("steady", 1), ("flaky", 2)):
        outcomes: list[object] = []

        def worker(prompt: str = prompt, outcomes: list[object] = outcomes) -> None:
            try:
                outcomes.append(cached_call(store, model, prompt)[0])  # type: ignore[arg-type]
            except RuntimeError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert made.count(prompt) == expected_requests
        answers = [o for o in outcomes if isinstance(o, str)]
        assert answers == [f"answer to {prompt}"] * (3 if prompt == "steady" else 2)  # one saw the failure


class Unwritable(SqliteCallCache):
    """A store that cannot keep an answer (a full disk, a read-only database)."""

    def fill(self, key: str, *, owner: str, value: str) -> None:
        raise StorageError("disk full")


def test_a_store_that_cannot_keep_an_answer_still_returns_it(tmp_path: Path) -> None:
    store = Unwritable(tmp_path / "cache.sqlite")
    requests: list[str] = []
    for _ in range(2):
        output, cached = cached_call(store, counting(requests), "question")  # type: ignore[arg-type]
        assert output == "answer to question" and cached.hits == 0
    assert requests == ["question", "question"]  # made again, without waiting for a claim left behind
    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM flujo_call_cache_claims").fetchone() == (0,)


def test_concurrent_identical_calls_in_two_processes_make_one_request(tmp_path: Path) -> None:
    store, requests, results = tmp_path / "cache.sqlite", tmp_path / "requests.txt", tmp_path / "results.txt"
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    workers = [spawn.Process(target=call_once, args=(str(store), str(requests), str(results), start)) for _ in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert requests.read_text().splitlines() == ["request"]  # one request for the two processes
    assert sorted(results.read_text().splitlines()) == ["hit the one answer", "request the one answer"]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    now = [100.0]
    if request.param == "sqlite":
        yield SqliteCallCache(tmp_path / "c.sqlite", clock=lambda: now[0]), now  # type: ignore[misc]
        return
    if not POSTGRES_URL:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set: set it (postgresql://user@host:port/db) to test PostgreSQL")
    prefix = f"flujo_cache_t{uuid.uuid4().hex[:12]}"
    pg = PostgresCallCache(POSTGRES_URL, table_prefix=prefix, clock=lambda: now[0])
    try:
        yield pg, now  # type: ignore[misc]
    finally:
        pg._write(lambda cur: cur.execute(f"DROP TABLE {prefix}, {prefix}_claims", {}))
        pg.close()


def test_a_claim_excludes_others_until_filled_released_or_expired(store: Store) -> None:
    cache, now = store
    assert cache.acquire("k", owner="a", max_age_s=None, lease_s=10).claimed
    assert not cache.acquire("k", owner="b", max_age_s=None, lease_s=10).claimed  # a holds it
    cache.release("k", owner="b")  # not b's: nothing happens
    assert not cache.acquire("k", owner="b", max_age_s=None, lease_s=10).claimed
    now[0] += 11  # a's lease ran out (its process died): b takes over
    assert cache.acquire("k", owner="b", max_age_s=None, lease_s=10).claimed
    cache.release("k", owner="b")  # b's request failed: the next caller claims at once
    assert cache.acquire("k", owner="c", max_age_s=None, lease_s=10).claimed
    cache.fill("k", owner="c", value="v1")
    assert cache.acquire("k", owner="d", max_age_s=5, lease_s=10).value == "v1"
    now[0] += 6
    assert cache.acquire("k", owner="d", max_age_s=5, lease_s=10).claimed  # expired: a miss, and d claims it
    cache.discard("k", value="other")  # only the value found bad is removed
    assert cache.acquire("k", owner="e", max_age_s=None, lease_s=10).value == "v1"
    cache.discard("k", value="v1")
    assert not cache.acquire("k", owner="e", max_age_s=None, lease_s=10).claimed  # d still holds the claim
    cache.fill("k", owner="d", value="v2")
    assert cache.acquire("k", owner="e", max_age_s=None, lease_s=10).value == "v2"


def test_the_store_serves_an_agent_call_in_postgres_too(store: Store) -> None:
    cache, _ = store
    requests: list[str] = []
    assert cached_call(cache, counting(requests), "question")[0] == "answer to question"
    output, cached = cached_call(cache, counting(requests), "question")
    assert output == "answer to question" and cached.hits == 1 and requests == ["question"]


def test_the_instance_cache_is_a_file_beside_the_ledger(instance: DagsterInstance) -> None:
    store = InstanceCallCache().for_instance(instance)
    assert isinstance(store, SqliteCallCache)
    assert store.path == Path(instance.storage_directory()) / "flujo" / "call_cache.sqlite"
    assert InstanceCallCache().for_instance(instance) is store


def test_a_reexecution_drops_the_claims_a_killed_process_left(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed mid-request never releases its claim. The re-execution of its (finished) run drops the
    claims that run still holds before its first cached request, so it asks at once instead of waiting out the
    lease; a claim of another run is kept."""
    monkeypatch.setenv(claim_defs.CLAIMS_ENV, str(tmp_path))
    (tmp_path / "fail").touch()
    (tmp_path / "killed").touch()
    job = reconstructable(claim_defs.claims_job)
    with execute_job(job, instance=instance, raise_on_error=False) as first:
        assert not first.success
        parent = first.run_id
    database = tmp_path / "cache.sqlite"
    with sqlite3.connect(database) as conn:
        owners = [row[0] for row in conn.execute("SELECT owner FROM flujo_call_cache_claims")]
        assert len(owners) == 1 and owners[0].startswith(f"{parent}/")  # left behind, as by a killed process
        conn.execute("UPDATE flujo_call_cache_claims SET expires_at = 4102444800")  # a lease it would still hold
        conn.execute("INSERT INTO flujo_call_cache_claims VALUES ('another key', 'another-run/x', 4102444800)")
    (tmp_path / "fail").unlink()
    (tmp_path / "killed").unlink()
    options = ReexecutionOptions.from_failure(parent, instance)
    with execute_job(job, instance=instance, reexecution_options=options, raise_on_error=False) as again:
        assert again.success
    assert (tmp_path / "requests.txt").read_text().splitlines() == ["asked"]
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT cache_key, owner FROM flujo_call_cache_claims").fetchall() == [
            ("another key", "another-run/x")
        ]
        assert conn.execute("SELECT count(*) FROM flujo_call_cache").fetchone() == (1,)


def test_release_run_drops_only_that_runs_claims(store: Store) -> None:
    cache, _ = store
    for key, owner in [("a", claim_owner("run-1", "x")), ("b", claim_owner("run-1", "y")), ("c", "run-10/z")]:
        assert cache.acquire(key, owner=owner, max_age_s=None, lease_s=600).claimed
    assert cache.acquire("d", owner=claim_owner("", "w"), max_age_s=None, lease_s=600).claimed
    assert cache.release_run("run-1") == 2
    assert cache.release_run("run-1") == 0
    assert cache.acquire("a", owner="next", max_age_s=None, lease_s=600).claimed  # free again
    assert not cache.acquire("c", owner="next", max_age_s=None, lease_s=600).claimed  # run-10 is another run
    assert not cache.acquire("d", owner="next", max_age_s=None, lease_s=600).claimed
