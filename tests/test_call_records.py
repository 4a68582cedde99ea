"""The record of every agent call: redacted and bounded (pure functions, with hostile inputs), stored beside the
step's outputs and linked from its metadata (expanded agent ops and inline ops), read back by
`flujo-dagster calls` (step filter, JSON, tampered files), and pydantic-ai's OpenTelemetry spans, off by default."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dagster import DagsterEventType, DagsterInstance, EnvVar
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, NoOpTracer, Span, Tracer, TracerProvider, use_span
from pydantic import BaseModel, create_model
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.usage import RequestUsage

from flujo_dagster import (
    AgentRuntime,
    Budget,
    Map,
    Pipeline,
    Price,
    ProviderSettings,
    Retry,
    agent_step,
    run_pipeline,
)
from flujo_dagster.adapter.control.calls import run_calls
from flujo_dagster.adapter.storage import call_files
from flujo_dagster.cli import main
from flujo_dagster.config import known_secrets
from flujo_dagster.names import CALL_RECORDS
from flujo_dagster.runtime.call_records import FORMAT, CallLog, bounded, encode_records, parse_records
from flujo_dagster.runtime.records import Meter
from flujo_dagster.runtime.redaction import REDACTED, Bounds, Cuts, Redactor, clean

ENV_KEY = "FLUJO_TEST_CALLS_PROVIDER_KEY"
ENV_SECRET = "zq-custom-provider-key-7f3b9c2d1e"  # no known shape: only its variable's value tells it apart
DEPS_SECRET = "sk-proj-DepsSecret0123456789abcdef"
PRICE = Price(input_per_mtok=1, output_per_mtok=2)
SETTINGS = {"max_tokens": 500}


# --- redaction and bounds: pure, with hostile inputs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrSt end", "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt"),
        ("openai sk-proj-0123456789abcdefXYZ end", "sk-proj-0123456789abcdefXYZ"),
        ("aws AKIAIOSFODNN7EXAMPLE end", "AKIAIOSFODNN7EXAMPLE"),
        ("gh ghp_0123456789abcdefghijABCDEFGHIJ end", "ghp_0123456789abcdefghijABCDEFGHIJ"),
        ("Authorization: Bearer abc.def-ghi_jkl123", "abc.def-ghi_jkl123"),
        ("curl -H 'authorization: Token q1w2e3r4t5'", "q1w2e3r4t5"),
        ("OPENAI_API_KEY=plainvalue123 next", "plainvalue123"),
        ('{"api_key": "jsonvalue456"}', "jsonvalue456"),
        ("password: hunter2hunter2", "hunter2hunter2"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.sig_nature-x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ"),
        ("db postgres://admin:s3cretpass@db.example.com/x", "s3cretpass"),
        (f"the env value {ENV_SECRET} inline", ENV_SECRET),
    ],
)
def test_known_secrets_are_redacted(text: str, secret: str) -> None:
    shown, found = Redactor([ENV_SECRET]).redact(text)
    assert secret not in shown and REDACTED in shown and found >= 1


def test_short_literal_values_and_ordinary_text_are_kept() -> None:
    redactor = Redactor(["abc", "", 42])  # too short, empty, not a string: never matched
    text = "max_tokens=100, abc, 42 tokens: 7, a task-list of sk-short"
    assert redactor.redact(text) == (text, 0)


def test_clean_bounds_hostile_values_and_counts_the_cuts() -> None:
    bounds = Bounds(text=50, items=5, depth=4)
    nested: Any = "deep"
    for _ in range(10_000):  # deeper than any recursion limit
        nested = [nested]
    hostile = {
        "long": "x" * 10_000 + DEPS_SECRET,
        "head": DEPS_SECRET + "y" * 10_000,
        DEPS_SECRET: "a secret in a key",
        "many": list(range(1_000)),
        "nested": nested,
        "nan": float("nan"),
        "object": object(),
    }
    cuts = Cuts()
    cleaned = clean(hostile, Redactor(), bounds, cuts)
    dumped = json.dumps(cleaned, allow_nan=False)
    assert DEPS_SECRET not in dumped and REDACTED in dumped
    assert isinstance(cleaned, dict) and len(cleaned) == 6  # 5 entries kept, then the "[cut]" note
    assert cuts.texts >= 2 and cuts.items > 0 and cuts.depth == 1 and cuts.redacted == 2
    assert any("cut to their bound" in note for note in cuts.summary())


def test_a_record_is_bounded_and_says_what_was_cut() -> None:
    bounds = Bounds(record=20_000)
    messages = [{"kind": "request", "parts": [{"part_kind": "user-prompt", "content": "m" * 3_000}]}] * 40
    record = bounded({"path": "p > agent:a"}, messages, "o" * 50_000, Redactor(), bounds)
    assert len(json.dumps(record)) <= bounds.record
    assert record["cut"] and any("record bound" in str(note) for note in record["cut"])  # type: ignore[union-attr]


def test_a_long_conversation_keeps_its_first_and_last_messages() -> None:
    messages = [{"kind": "request", "parts": [{"part_kind": "text", "content": f"m{i}"}]} for i in range(500)]
    record = bounded({"path": "p"}, messages, "o", Redactor(), Bounds(items=11))
    kept = record["messages"]
    assert isinstance(kept, list) and len(kept) == 11
    assert kept[0]["parts"][0]["content"] == "m0" and kept[-1]["parts"][0]["content"] == "m499"  # type: ignore[index]
    assert kept[5] == "[cut: 490 middle messages left out]"


def test_a_file_of_records_is_bounded_and_counts_what_it_left_out() -> None:
    records = [{"path": f"p{i}", "messages": "m" * 5_000, "output": "o"} for i in range(100)]
    raw = encode_records(records, run_id="r", step_key="s", limit=50_000)
    assert len(raw) <= 50_000
    read = parse_records(raw, where="here")
    assert 0 < len(read.records) < 100
    assert any(r["messages"] == "[cut: file bound]" for r in read.records)
    assert any("left out when written" in p for p in read.problems)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe not utf-8", "not a JSON file"),
        (b"{not json", "not a JSON file"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON file"),
        (b'{"format": "other", "calls": []}', "not a file of call records"),
        (json.dumps({"format": FORMAT, "calls": "x"}).encode(), "not a file of call records"),
        (json.dumps({"format": FORMAT, "calls": [1, {"no": "path"}]}).encode(), "call 1 is not a call record"),
    ],
)
def test_parsing_a_hostile_file_reports_never_raises(raw: bytes, problem: str) -> None:
    read = parse_records(raw, where="run r step s")
    assert read.records == () and any(problem in p and p.startswith("run r step s") for p in read.problems)


def test_a_record_read_back_has_its_nesting_bounded() -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    raw = json.dumps({"format": FORMAT, "calls": [{"path": "p", "output": deep}]}).encode()
    (record,) = parse_records(raw, where="w").records
    assert "nested too deep" in json.dumps(record)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_a_failed_call_with_an_unprintable_error_is_still_recorded() -> None:
    log = CallLog(redactor=Redactor())
    log.begin("p > agent:a", meter=Meter(), scopes=None, configured="openai:gpt-5").failed(Unprintable(), [])
    (record,) = log.records
    assert record["error"] == "Unprintable: (its message cannot be shown)" and record["model"] == "openai:gpt-5"
    assert record["budget"] == {"decision": "unbudgeted"} and record["status"] == "failed"


# --- the record of an agent step ---------------------------------------------------------------------------------


class Notes(BaseModel):
    topic: str = ""
    answer: str = ""


def reveal_agent() -> Agent[str, str]:
    agent: Agent[str, str] = Agent("openai:gpt-5-mini", deps_type=str, defer_model_check=True, instructions="Be brief.")

    @agent.tool
    def reveal(ctx: RunContext[str]) -> str:
        """Returns the deps (a secret)."""
        return ctx.deps

    return agent


def echo_model() -> FunctionModel:
    """Calls `reveal`, then answers with the prompt and what the tool returned: the secrets of both."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]
        if not returned:
            return ModelResponse(
                parts=[ToolCallPart("reveal", {})], usage=RequestUsage(input_tokens=10, output_tokens=5)
            )
        prompt = next(
            str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart)
        )
        text = f"echo: {prompt} / {returned[0]}"
        return ModelResponse(parts=[TextPart(text)], usage=RequestUsage(input_tokens=20, output_tokens=8))

    return FunctionModel(answer, model_name="echo")


def runtime(**kwargs: Any) -> AgentRuntime:
    return AgentRuntime(
        model=echo_model(),
        prices={"function:echo": PRICE},
        providers={"openai": ProviderSettings(api_key=EnvVar(ENV_KEY))},
        **kwargs,
    )


def ask_pipeline(*, budget: Budget | None = None) -> Pipeline:
    ask = agent_step(
        "ask",
        agent=reveal_agent(),
        prompt="Tell me about {topic}",
        output_key="answer",
        model_settings=SETTINGS,
        deps=lambda: DEPS_SECRET,
    )
    return Pipeline("ask_calls", context=Notes, steps=[ask], budget=budget)


def stored_file(instance: DagsterInstance, run_id: str) -> Path:
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_OUTPUT, DagsterEventType.STEP_FAILURE}):
        event = entry.dagster_event
        assert event is not None
        if event.event_type == DagsterEventType.STEP_OUTPUT:
            metadata = event.step_output_data.metadata
        else:
            metadata = event.step_failure_data.user_failure_data.metadata  # type: ignore[union-attr]
        if CALL_RECORDS in metadata:
            return Path(metadata[CALL_RECORDS].value)
    raise AssertionError("no step links its call records")


def test_the_call_record_of_an_agent_step_is_redacted_and_complete(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_KEY, ENV_SECRET)
    result = run_pipeline(
        ask_pipeline(budget=Budget(max_cost_usd=1)),
        {"topic": f"keys like {ENV_SECRET}"},
        instance=instance,
        resources={"agent_runtime": runtime()},
    )
    assert result.success and ENV_SECRET in result.context.answer and DEPS_SECRET in result.context.answer
    file = stored_file(instance, result.run_id)
    assert file.parent.name == "flujo.calls" and file.parent.parent.name == "ask" and file.name == "try-0.json"
    raw = file.read_text()
    assert ENV_SECRET not in raw and DEPS_SECRET not in raw and REDACTED in raw
    (call,) = run_calls(result.run_id, instance=instance).calls
    record = call.record
    assert record["path"] == "ask_calls > agent:ask" and record["status"] == "ok" and record["attempt"] == 1
    assert record["model"] == "function:echo" and record["model_source"] == "offline" and record["cache"] == "miss"
    assert isinstance(record["latency_s"], float) and record["latency_s"] >= 0
    assert record["usage"] == {
        "requests": 2,
        "input_tokens": 30,
        "output_tokens": 13,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "unmeasured_requests": 0,
    }
    assert Decimal(str(record["cost_usd"])) == Decimal("0.000056")
    assert str(record["output"]).startswith("echo: Tell me about keys like [REDACTED] / [REDACTED]")
    kinds = [part["part_kind"] for m in record["messages"] for part in m["parts"]]  # type: ignore[attr-defined,index]
    assert kinds == ["user-prompt", "tool-call", "tool-return", "text"]
    assert record["messages"][0]["instructions"] == "Be brief."  # type: ignore[index]
    budget = record["budget"]
    assert isinstance(budget, dict) and budget["decision"] == "reserved and reconciled"
    assert budget["scopes"] == [f"run:{result.run_id}"] and len(budget["requests"]) == 2
    assert all(r["settled"] == "reconciled" and r["reserved_usd"] and r["reserved_tokens"] for r in budget["requests"])
    assert record["redactions"] >= 3


def test_an_unbudgeted_call_says_so(instance: DagsterInstance) -> None:
    result = run_pipeline(ask_pipeline(), {"topic": "x"}, instance=instance, resources={"agent_runtime": runtime()})
    (call,) = run_calls(result.run_id, instance=instance).calls
    assert call.record["budget"] == {"decision": "unbudgeted"}


def test_a_call_the_budget_stops_is_recorded_failed_and_linked(instance: DagsterInstance) -> None:
    result = run_pipeline(
        ask_pipeline(budget=Budget(max_cost_usd=Decimal("0.00105"))),  # max_tokens fit, the prompt does not
        {"topic": "x"},
        instance=instance,
        resources={"agent_runtime": runtime()},
    )
    assert not result.success
    assert stored_file(instance, result.run_id).exists()  # linked from the step's failure
    (call,) = run_calls(result.run_id, instance=instance).calls
    record = call.record
    assert record["status"] == "failed" and str(record["error"]).startswith("UsageLimitExceededError: ")
    assert record["budget"]["decision"] == "stopped by the budget"  # type: ignore[index]
    assert record["model"] == "function:echo" and record["messages"]  # the configured model; the prompt sent


def test_each_attempt_of_a_retried_step_is_its_own_record(instance: DagsterInstance) -> None:
    tries: list[int] = []

    def flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError(f"provider down, key {DEPS_SECRET}")
        return ModelResponse(parts=[TextPart("fine")], usage=RequestUsage(input_tokens=3, output_tokens=2))

    ask = agent_step(
        "ask",
        agent=Agent("openai:gpt-5-mini", defer_model_check=True),
        prompt="{topic}",
        output_key="answer",
        retry=Retry(max_retries=1, delay=timedelta(0)),
    )
    agents = AgentRuntime(model=FunctionModel(flaky, model_name="echo"), prices={"function:echo": PRICE})
    pipeline = Pipeline("retry_calls", context=Notes, steps=[ask])
    result = run_pipeline(pipeline, {"topic": "t"}, instance=instance, resources={"agent_runtime": agents})
    assert result.success
    first, second = (c.record for c in run_calls(result.run_id, instance=instance).calls)
    assert (first["attempt"], first["status"], second["attempt"], second["status"]) == (1, "failed", 2, "ok")
    assert first["error"] == f"RuntimeError: provider down, key {REDACTED}" and first["messages"]
    assert second["output"] == "fine"


def map_pipeline() -> Pipeline:
    context = create_model(  # type: ignore[call-overload]
        "MapCalls", topics=(list[str], ["a", "b"]), topic=(str, ""), answer=(str, ""), answers=(list[str], [])
    )
    ask = agent_step(
        "ask", agent=reveal_agent(), prompt="Tell me about {topic}", output_key="answer", deps=lambda: DEPS_SECRET
    )
    body = Map("each", over="topics", item="topic", body=[ask], result="answer", into="answers")
    return Pipeline("map_calls", context=context, steps=[body])


def cli(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["calls", *args], env={"DAGSTER_HOME": str(home)})
    return result.exit_code, result.stdout, result.stderr


def test_inline_calls_are_one_file_per_op_and_the_cli_reads_and_filters_them(
    instance: DagsterInstance, dagster_home: Path
) -> None:
    result = run_pipeline(map_pipeline(), {}, instance=instance, resources={"agent_runtime": runtime()})
    assert result.success
    file = stored_file(instance, result.run_id)
    document = json.loads(file.read_text())
    paths = sorted(c["path"] for c in document["calls"])
    assert paths == ["map_calls > map:each > [0] > agent:ask", "map_calls > map:each > [1] > agent:ask"]
    assert DEPS_SECRET not in file.read_text()
    code, out, err = cli(dagster_home, result.run_id[:8])
    assert code == 0 and err == ""
    assert out.count("attempt 1  ok  function:echo (offline)") == 2 and out.rstrip().endswith("2 agent call(s)")
    assert "[request] user-prompt: Tell me about a" in out and "tool call reveal({})" in out
    assert f"tool return reveal: {REDACTED}" in out and "budget: unbudgeted" in out
    code, out, _ = cli(dagster_home, result.run_id, "--step", "map_calls > map:each > [1] > agent:ask")
    assert code == 0 and "Tell me about b" in out and "Tell me about a" not in out
    assert out.rstrip().endswith("1 agent call(s) of step 'map_calls > map:each > [1] > agent:ask'")
    code, out, _ = cli(dagster_home, result.run_id, "--step", "map_calls > map:each", "--json")
    parsed = json.loads(out)
    assert code == 0 and len(parsed["calls"]) == 2 and parsed["problems"] == []
    assert {c["run_id"] for c in parsed["calls"]} == {result.run_id}
    code, out, err = cli(dagster_home, result.run_id, "--step", "ask")  # a step's name, not its path
    assert code == 0 and out.rstrip().endswith("0 agent call(s) of step 'ask'")
    assert err == (
        "no call of step 'ask'; --step takes a step path as printed, one of: "
        "'map_calls > map:each > [0] > agent:ask', 'map_calls > map:each > [1] > agent:ask'\n"
    )


def test_a_tampered_record_file_is_reported_not_a_crash(
    instance: DagsterInstance, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_pipeline(ask_pipeline(), {"topic": "x"}, instance=instance, resources={"agent_runtime": runtime()})
    file = stored_file(instance, result.run_id)
    escape = "\x1b[2J\u202e"
    tampered = {"format": FORMAT, "calls": ["junk", {"path": f"evil{escape}", "messages": {"kind": 3}, "usage": 7}]}
    file.write_text(json.dumps(tampered))
    code, out, err = cli(dagster_home, result.run_id)
    assert code == 0 and "evil" in out and escape not in out and "\x1b" not in out
    assert "call 1 is not a call record" in err
    file.write_text("{" * 50)
    code, out, err = cli(dagster_home, result.run_id)
    assert code == 0 and out.strip() == "0 agent call(s)" and "not a JSON file of call records" in err
    monkeypatch.setattr(call_files, "MAX_READ_BYTES", 10)
    code, _, err = cli(dagster_home, result.run_id)
    assert code == 0 and "not read" in err
    monkeypatch.undo()
    file.unlink()
    file.symlink_to("/etc/hostname")
    code, _, err = cli(dagster_home, result.run_id)
    assert code == 0 and "cannot be read" in err and "symlink" in err


def test_the_redactor_knows_the_deployment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KEY, ENV_SECRET)
    monkeypatch.setenv("MISTRAL_API_KEY", "mistral0123456789")
    literal = AgentRuntime(providers={"openai": ProviderSettings(api_key="literal-key-in-code-99")})
    assert "mistral0123456789" in known_secrets()
    assert runtime().secret_values() == [ENV_SECRET] and literal.secret_values() == ["literal-key-in-code-99"]
    log = call_files.call_log_for(literal, [])
    assert {"mistral0123456789", "literal-key-in-code-99"} <= set(log.redactor.secrets)
    assert isinstance(log, CallLog)


# --- OpenTelemetry ------------------------------------------------------------------------------------------------


class Recorder(TracerProvider):
    """An OpenTelemetry tracer provider (API only: the SDK is not installed) that records span names."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        return _Tracer(self.names)


class _Tracer(NoOpTracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Span:
        self.names.append(name)
        return NonRecordingSpan(trace.SpanContext(1, len(self.names), is_remote=False))

    @contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[Span]:  # type: ignore[override]
        with use_span(self.start_span(name), end_on_exit=True) as span:
            yield span


def spying_model(seen: list[bool]) -> FunctionModel:
    """Answers, noting whether it runs inside a span."""

    def answer(messages: Sequence[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(trace.get_current_span() is not INVALID_SPAN)
        return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=1, output_tokens=1))

    return FunctionModel(answer, model_name="echo")  # type: ignore[arg-type]


def spied(instance: DagsterInstance, **kwargs: Any) -> list[bool]:
    seen: list[bool] = []
    plain = agent_step(
        "ask", agent=Agent("openai:gpt-5-mini", defer_model_check=True), prompt="{topic}", output_key="answer"
    )
    pipeline = Pipeline("otel_calls", context=Notes, steps=[plain], cache=False)  # each run makes its request
    agents = AgentRuntime(model=spying_model(seen), prices={"function:echo": PRICE}, **kwargs)
    assert run_pipeline(pipeline, {"topic": "t"}, instance=instance, resources={"agent_runtime": agents}).success
    return seen


def test_opentelemetry_is_off_by_default_and_on_produces_spans(instance: DagsterInstance) -> None:
    assert AgentRuntime().instrumentation is None
    assert spied(instance) == [False]
    recorder = Recorder()
    assert spied(instance, instrument=InstrumentationSettings(tracer_provider=recorder)) == [True]
    assert "chat echo" in recorder.names  # the model request's span
    assert any(name.startswith("invoke_agent ") for name in recorder.names)  # the agent run's span
    default = AgentRuntime(instrument=True).instrumentation
    assert default is not None and default.include_content is False
