"""What the call cache keys on: the endpoint a model sends a request to (a model of the same name at another base
URL answers differently), everything a tool is called with and returns (whatever its field names), and what it
will not store (an oversized answer)."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.settings import merge_model_settings

from flujo_dagster.adapter.storage.call_cache_sql import SqliteCallCache
from flujo_dagster.dsl.cache import Cache
from flujo_dagster.runtime.cache import MAX_ENTRY_CHARS, CachedModel, CacheUse, request_key


class Hosted(FunctionModel):
    """A model `gpt` served at `url` (as a provider's model is at its base URL), answering `text`."""

    def __init__(self, url: str, text: str, made: list[str]) -> None:
        async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            made.append(url)
            return ModelResponse(parts=[TextPart(text)])

        super().__init__(answer, model_name="gpt")
        self._url = url

    @property
    def base_url(self) -> str | None:
        return self._url


def _call(store: SqliteCallCache, model: FunctionModel, max_entry: int = MAX_ENTRY_CHARS) -> str:
    use = CacheUse(store, Cache())
    cached = CachedModel(model, cache=use, path="t", saved=lambda m, r: Decimal(0), max_entry=max_entry)
    return str(anyio.run(Agent(cached).run, "question").output)


def test_a_model_at_another_base_url_does_not_hit_the_entries_of_the_first(tmp_path: Path) -> None:
    store, made = SqliteCallCache(tmp_path / "cache.sqlite"), []
    assert _call(store, Hosted("http://private.example/v1", "private answer", made)) == "private answer"
    assert _call(store, Hosted("https://api.example/v1", "public answer", made)) == "public answer"
    assert made == ["http://private.example/v1", "https://api.example/v1"]
    assert _call(store, Hosted("https://api.example/v1", "changed", made)) == "public answer"  # same endpoint: a hit


def test_an_answer_above_the_entry_bound_is_returned_but_not_stored(tmp_path: Path) -> None:
    store, made = SqliteCallCache(tmp_path / "cache.sqlite"), []
    for _ in range(2):
        assert _call(store, Hosted("u", "x" * 200, made), max_entry=100) == "x" * 200
    assert made == ["u", "u"]  # not stored (and no claim left behind): asked again at once
    assert _call(store, Hosted("u", "short", made), max_entry=100) == "short"
    assert _call(store, Hosted("u", "short", made), max_entry=10) == "short"  # an entry above the bound: a miss
    assert made == ["u", "u", "u", "u"]


def _tool_return(content: object) -> list[ModelMessage]:
    call = ModelResponse(parts=[ToolCallPart("quota", {"timestamp": "2026-01-01", "run_id": "r1"}, "c1")])
    return [
        ModelRequest(parts=[UserPromptPart("am I over quota?")]),
        call,
        ModelRequest(parts=[ToolReturnPart("quota", content, "c1")]),
    ]


def test_what_a_tool_returns_or_is_called_with_is_keyed_whatever_its_field_names() -> None:
    params = ModelRequestParameters()

    def key(messages: list[ModelMessage]) -> str | None:
        return request_key("openai:gpt-5", None, messages, params)

    over, under = _tool_return({"usage": 950, "duration": 30}), _tool_return({"usage": 10, "duration": 1})
    assert key(over) != key(under)  # the answer depends on them: never one for the other
    later = _tool_return({"usage": 950, "duration": 30})
    later[0].parts[0].timestamp = later[0].parts[0].timestamp.replace(year=2001)  # type: ignore[union-attr]
    assert key(later) == key(over)  # the message's own timestamp is still not keyed
    args = _tool_return({"usage": 1})
    args[1].parts[0].args = {"timestamp": "2026-02-02", "run_id": "r1"}  # type: ignore[union-attr]
    assert key(args) != key(_tool_return({"usage": 1}))


def test_a_waiter_stops_waiting_after_its_own_lease_whatever_the_claimant_clock_said(tmp_path: Path) -> None:
    ahead = SqliteCallCache(tmp_path / "cache.sqlite", clock=lambda: time.time() + 86_400)  # a clock a day ahead
    made: list[str] = []
    model = Hosted("u", "answer", made)
    use = CacheUse(SqliteCallCache(tmp_path / "cache.sqlite"), Cache(lease=timedelta(seconds=0.2)))
    cached = CachedModel(model, cache=use, path="t", saved=lambda m, r: Decimal(0))

    async def run() -> str:
        with anyio.fail_after(60):  # a day's wait fails the test instead of hanging it
            return str((await Agent(cached).run("question")).output)

    # the process a day ahead claimed every request this one can make, then died
    real = cached.request

    async def claimed_first(*args: Any, **kwargs: Any) -> ModelResponse:
        messages, settings, params = args
        merged = merge_model_settings(cached.settings, settings)
        taken = request_key("function:gpt", merged, messages, params, base_url="u", step="t")
        assert taken is not None
        ahead.acquire(taken, owner="dead", max_age_s=None, lease_s=60)
        return await real(*args, **kwargs)

    cached.request = claimed_first  # type: ignore[method-assign]
    assert anyio.run(run) == "answer"
    assert made == ["u"]
