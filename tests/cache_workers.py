"""A process of the cross-process call-cache test: runs one agent call through a `CachedModel` over a shared
SQLite call cache, its model appending a line to a shared file for each request it makes."""

from __future__ import annotations

import time
from decimal import Decimal
from multiprocessing.synchronize import Barrier
from pathlib import Path

import anyio
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster.adapter.storage.call_cache_sql import SqliteCallCache
from flujo_dagster.dsl.cache import Cache
from flujo_dagster.runtime.cache import CachedModel, CacheUse


def counting_model(requests: Path, *, wait_s: float) -> FunctionModel:
    """Appends one line to `requests` per request, then answers after `wait_s` (long enough that an identical
    request started meanwhile finds the claim)."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        with requests.open("a") as out:
            out.write("request\n")
        await anyio.sleep(wait_s)
        return ModelResponse(parts=[TextPart("the one answer")], usage=RequestUsage(input_tokens=3, output_tokens=5))

    return FunctionModel(answer, model_name="shared")


def call_once(store_path: str, requests_path: str, results_path: str, start: Barrier) -> None:
    """Wait for the other process, then make the call; append `hit` or `request` and the output to `results`."""
    store = SqliteCallCache(store_path)
    cached = CachedModel(
        counting_model(Path(requests_path), wait_s=1.0),
        cache=CacheUse(store, Cache()),
        path="worker",
        saved=lambda model, response: Decimal(0),
    )
    start.wait(timeout=60)
    time.sleep(0)  # both processes are past the barrier
    result = anyio.run(Agent(cached).run, "same question")
    with Path(results_path).open("a") as out:
        out.write(f"{'hit' if cached.hits else 'request'} {result.output}\n")
