"""Pipelines run from sync code and from inside a running event loop, and agents survive one loop per run.

Dagster drives async ops on a fresh event loop per run (closed at the end), which must not collide with a loop
that is already running (a notebook, an async test), nor leave pydantic-ai's HTTP client bound to a closed loop.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pydantic_ai.models
import pytest
from dagster import DagsterInstance
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from flujo_dagster import AgentRuntime, Pipeline, Price, agent_step, arun_pipeline, run_pipeline, step

# --- a pipeline with async function steps around a sync one -------------------------------------------------


@dataclass
class StepCall:
    step: str
    thread: str
    loop: int


CALLS: list[StepCall] = []


def _record(name: str) -> None:
    CALLS.append(StepCall(name, threading.current_thread().name, id(asyncio.get_running_loop())))


class Numbers(BaseModel):
    x: int
    doubled: int | None = None
    label: str | None = None
    shout: str | None = None


@step
async def doubled(x: int) -> int:
    _record("doubled")
    await asyncio.sleep(0.01)  # really suspends: the op's loop must be running
    return x * 2


@step
def label(doubled: int | None) -> str:
    assert doubled is not None
    return f"n={doubled}"


@step
async def shout(label: str | None) -> str:
    assert label is not None
    _record("shout")
    await anyio.sleep(0.01)
    return label.upper() + "!"


numbers = Pipeline("numbers", context=Numbers, steps=doubled >> label >> shout)


def _assert_numbers(result: Any, x: int) -> None:
    assert result.success, result.error
    assert result.context == Numbers(x=x, doubled=2 * x, label=f"n={2 * x}", shout=f"N={2 * x}!")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


def test_async_steps_from_sync_code(instance: DagsterInstance) -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # really sync: no loop in this thread
    _assert_numbers(run_pipeline(numbers, {"x": 3}, instance=instance), 3)
    assert [c.step for c in CALLS] == ["doubled", "shout"]
    # No loop was running, so the run stays in this thread, on one loop Dagster made for it.
    assert {c.thread for c in CALLS} == {threading.current_thread().name}
    assert len({c.loop for c in CALLS}) == 1


@pytest.mark.anyio
async def test_sync_run_pipeline_inside_a_running_loop(instance: DagsterInstance) -> None:
    outer = asyncio.get_running_loop()
    _assert_numbers(run_pipeline(numbers, {"x": 5}, instance=instance), 5)
    assert [c.step for c in CALLS] == ["doubled", "shout"]
    # Handed to anyio's worker thread, on its own loop; the test's loop is untouched and still running.
    assert {c.thread for c in CALLS} == {"AnyIO worker thread"}
    assert {c.loop for c in CALLS} != {id(outer)} and len({c.loop for c in CALLS}) == 1
    assert outer.is_running() and not outer.is_closed()


@pytest.mark.anyio
async def test_arun_pipeline_keeps_the_caller_loop_free(instance: DagsterInstance) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await arun_pipeline(numbers, {"x": 7}, instance=instance)
        tg.cancel_scope.cancel()
    _assert_numbers(result, 7)
    assert {c.thread for c in CALLS} == {"AnyIO worker thread"}
    assert ticks >= 5, f"the caller's loop was blocked during the run ({ticks} ticks)"


# --- two runs, one process, one agent on an OpenAI-compatible model over real HTTP --------------------------


@dataclass
class StubOpenAI:
    """A chat-completions endpoint on 127.0.0.1 that answers from the last user message."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"


def _answer(prompt: str) -> str:
    return f"stub answer to: {prompt}"


def _handler(stub_requests: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections, as with a real provider
        timeout = 10

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            stub_requests.append(body)
            prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            self._send(
                200,
                {
                    "id": f"chatcmpl-stub-{len(stub_requests)}",
                    "object": "chat.completion",
                    "created": 1_700_000_000,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": _answer(prompt)},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


@pytest.fixture
def stub_openai() -> Iterator[StubOpenAI]:
    requests: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(requests))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stub-openai", daemon=True)
    thread.start()
    try:
        yield StubOpenAI(server, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def allow_local_model_requests() -> Iterator[None]:
    """conftest forbids model requests; the local stub is not a provider, so allow them for one test."""
    previous = pydantic_ai.models.ALLOW_MODEL_REQUESTS
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = True
    try:
        yield
    finally:
        pydantic_ai.models.ALLOW_MODEL_REQUESTS = previous


class Question(BaseModel):
    topic: str
    answer: str | None = None


def _ask(agent: Agent[None, str]) -> Pipeline:
    answer = agent_step("answer", agent=agent, prompt="Tell me about {topic}.")
    return Pipeline("ask", context=Question, steps=[answer])


@pytest.mark.usefixtures("allow_local_model_requests")
@pytest.mark.parametrize("model_from", ["agent_runtime", "agent"])
def test_two_runs_share_an_openai_compatible_model(
    instance: DagsterInstance, stub_openai: StubOpenAI, model_from: str
) -> None:
    """One model object, two runs (two Dagster loops): the second must not reuse the first loop's client."""
    model = OpenAIChatModel("stub-model", provider=OpenAIProvider(base_url=stub_openai.base_url, api_key="test"))
    if model_from == "agent_runtime":  # the override path: AgentRuntime(model=...)
        agent = Agent("openai:gpt-5-mini", defer_model_check=True, instructions="Answer in one sentence.")
        runtime = AgentRuntime(model=model)
    else:  # the agent's own model object, no override
        agent = Agent(model, instructions="Answer in one sentence.")
        runtime = AgentRuntime()
    pipeline = _ask(agent)
    resources = {"agent_runtime": runtime}
    prices = {"openai:stub-model": Price(input_per_mtok=1, output_per_mtok=2)}

    first = run_pipeline(pipeline, {"topic": "alpha"}, instance=instance, resources=resources, prices=prices)
    second = run_pipeline(pipeline, {"topic": "beta"}, instance=instance, resources=resources, prices=prices)

    for result, topic in ((first, "alpha"), (second, "beta")):
        assert result.success, result.error
        assert result.context == Question(topic=topic, answer=_answer(f"Tell me about {topic}."))
        (call,) = result.agent_calls
        assert (call.model, call.requests, call.input_tokens, call.output_tokens) == ("openai:stub-model", 1, 11, 7)
    assert [r["model"] for r in stub_openai.requests] == ["stub-model", "stub-model"]
    assert [r["messages"][-1]["content"] for r in stub_openai.requests] == [
        "Tell me about alpha.",
        "Tell me about beta.",
    ]
    # Each run's loop is closed by now: anything it left open (a client, a pooled connection) warns when
    # collected, and warnings are errors here.
    del first, second, resources, runtime, pipeline, agent, model
    gc.collect()
