"""The shared agent-call cache: each model request of an agent step is served from a store every process of the
deployment shares when an identical request was answered before (docs/cache.md).

`CachedModel` wraps the model an agent step runs on (pydantic-ai `WrapperModel`), outside the `BudgetedModel`: a
hit makes no request and reserves nothing. The key is the SHA-256 of the canonical JSON of the model's id, the
merged model settings, the rendered messages (what varies between two runs of the same request left out:
timestamps, run ids, usage) and the request parameters (output schema, output mode, tool definitions). The
value is the serialized `ModelResponse`, validated when read: an entry that is not one is a miss, removed, and
overwritten by the fresh answer. Concurrent identical requests make one: the first claims the key for a lease,
the others poll until the answer is stored, the claim is released (a failed or cancelled request) or its lease
ran out (a killed process); then one of them claims it in turn. A waiter waits at most one lease by its own
clock, then makes the request unclaimed (a claimant whose clock runs ahead stamps a lease that ends late).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol, runtime_checkable

import anyio
import pydantic
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings, merge_model_settings
from pydantic_ai.usage import RequestUsage
from pydantic_core import PydanticSerializationError, to_jsonable_python

from flujo_dagster.dsl.cache import Cache, cache_policy
from flujo_dagster.errors import StorageError
from flujo_dagster.runtime.records import Charge, Meter

__all__ = [
    "MAX_ENTRY_CHARS",
    "POLL_S",
    "Acquired",
    "CacheUse",
    "CachedModel",
    "CallCache",
    "cache_use",
    "claim_owner",
    "request_key",
]

POLL_S = 0.05
"""How often a request waiting for an identical one looks again."""

MAX_ENTRY_CHARS = 4 * 1024 * 1024
"""The largest serialized response stored (and served): a larger answer is returned but not kept, and a larger
entry found in the store is a miss."""

_VOLATILE = frozenset(
    {"timestamp", "request_timestamp", "duration", "run_id", "conversation_id", "usage", "provider_response_id"}
)
"""Message fields that differ between two runs of the same request (or that a hit rewrites: usage): not keyed."""

_RESPONSE = pydantic.TypeAdapter(ModelResponse)


@dataclass(frozen=True)
class Acquired:
    """What `CallCache.acquire` found: the stored value (fresh enough), or whether this caller now holds the claim
    (neither: another caller holds it; wait and look again)."""

    value: str | None = None
    claimed: bool = False


@runtime_checkable
class CallCache(Protocol):
    """A store of model responses shared by the processes of a deployment (`SqliteCallCache`,
    `PostgresCallCache`). Every method is one atomic transaction, safe from any thread and process."""

    def acquire(self, key: str, *, owner: str, max_age_s: float | None, lease_s: float) -> Acquired:
        """The value stored under `key` when it is younger than `max_age_s` (None: any age); else a claim on
        `key` for `owner` for `lease_s` seconds, unless another owner holds one that has not expired."""
        ...

    def fill(self, key: str, *, owner: str, value: str) -> None:
        """Store `value` under `key` (replacing any entry) and drop `owner`'s claim."""
        ...

    def release(self, key: str, *, owner: str) -> None:
        """Drop `owner`'s claim on `key` (no-op when it holds none)."""
        ...

    def discard(self, key: str, *, value: str) -> None:
        """Delete the entry of `key` if it still holds `value` (an entry found unreadable)."""
        ...

    def release_run(self, run_id: str) -> int:
        """Drop every claim that the processes of run `run_id` hold (owners `claim_owner(run_id, ...)`): the run
        has finished, so a claim it still holds was left by a killed process; how many were dropped."""
        ...


def claim_owner(run_id: str, nonce: str) -> str:
    """The owner of a claim taken by one request of run `run_id` (`run_id` empty: of no known run)."""
    return f"{run_id}/{nonce}" if run_id else nonce


@dataclass(frozen=True)
class CacheUse:
    """The store a step's requests use and the policy they follow."""

    store: CallCache
    policy: Cache
    run_id: str = ""
    """The run whose requests take the claims (so a re-execution can drop what a killed process left)."""


_PAYLOAD = frozenset({"content", "args"})
"""Part fields that hold what the model reads (a prompt, a tool's arguments or return): keyed whole, whatever
field names their values use (a tool returning `{"usage": ...}` or `{"timestamp": ...}`)."""


def _stable(value: object) -> object:
    """`value` (JSON data of messages) without the volatile fields of the messages and their parts."""
    if isinstance(value, dict):
        return {k: v if k in _PAYLOAD else _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def request_key(
    model_id: str,
    settings: ModelSettings | None,
    messages: list[ModelMessage],
    parameters: ModelRequestParameters,
    *,
    base_url: str | None = None,
    step: str | None = None,
) -> str | None:
    """The cache key of one request (hex SHA-256), or None when some of it does not serialize to JSON (a
    tool returned an object pydantic cannot dump): such a request is not cached. `base_url` is where the model's
    provider sends it: the same model name at another endpoint (a proxy, a local server) is another model.
    `step` is the step path that asks: a loop's next iteration (or another step) asking the same thing again
    wants a new answer, while a re-materialization asks from the same paths and is answered from the cache."""
    try:
        document = {
            "model": model_id,
            "step": step,
            "base_url": base_url,
            "settings": to_jsonable_python(dict(settings or {})),
            "messages": _stable(ModelMessagesTypeAdapter.dump_python(messages, mode="json")),
            "parameters": to_jsonable_python(parameters),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (PydanticSerializationError, TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _read(value: str) -> ModelResponse | None:
    """The stored response, or None when `value` is not one."""
    try:
        return _RESPONSE.validate_json(value)
    except (pydantic.ValidationError, ValueError):
        return None


class CachedModel(WrapperModel):
    """`wrapped`, with each request answered from `cache` when an identical one was answered before (a hit is
    added to `meter` as a charge of $0 with the cost it saved, priced by `saved` for the answering model's id).
    Streamed requests are not cached: `WrapperModel` passes them to the wrapped model."""

    def __init__(
        self,
        wrapped: Model,
        *,
        cache: CacheUse,
        path: str,
        saved: Callable[[str, ModelResponse], Decimal | None],
        meter: Meter | None = None,
        max_entry: int = MAX_ENTRY_CHARS,
    ) -> None:
        super().__init__(wrapped)
        self.max_entry = max_entry
        self.cache = cache
        self.path = path
        self.saved = saved
        self.meter = meter
        self.hits = 0
        self.saved_usd = Decimal(0)

    def _hit(self, response: ModelResponse) -> ModelResponse:
        """`response` as served from the cache (no usage: nothing was spent), recorded as a hit."""
        model = f"{response.provider_name or self.system}:{response.model_name}"
        saved = self.saved(model, response) or Decimal(0)
        self.hits += 1
        self.saved_usd += saved
        if self.meter is not None:
            self.meter.add(
                Charge(
                    model=model, requests=0, cost_usd=Decimal(0), price_source="cache", cache_hits=1, saved_usd=saved
                )
            )
        return replace(response, usage=RequestUsage())

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        merged = merge_model_settings(self.settings, model_settings)
        key = request_key(
            f"{self.system}:{self.model_name}",
            merged,
            messages,
            model_request_parameters,
            base_url=self.base_url,
            step=self.path,
        )
        if key is None:
            return await super().request(messages, model_settings, model_request_parameters)
        owner, store, policy = claim_owner(self.cache.run_id, uuid.uuid4().hex), self.cache.store, self.cache.policy
        max_age = None if policy.ttl is None else policy.ttl.total_seconds()
        lease = policy.lease.total_seconds()
        give_up = anyio.current_time() + lease  # this process's clock: a claim stamped by a skewed one ends too
        while True:
            found = store.acquire(key, owner=owner, max_age_s=max_age, lease_s=lease)
            if found.value is not None:
                response = _read(found.value) if len(found.value) <= self.max_entry else None
                if response is not None:
                    return self._hit(response)
                store.discard(key, value=found.value)  # a bad entry is a miss
                continue
            if found.claimed or anyio.current_time() >= give_up:
                break  # claimed; or waited a whole lease: the claimant died or its clock is ahead, ask anyway
            await anyio.sleep(POLL_S)
        try:
            response = await super().request(messages, model_settings, model_request_parameters)
        except BaseException:
            with anyio.CancelScope(shield=True):
                store.release(key, owner=owner)  # a waiter takes over
            raise
        value = _RESPONSE.dump_json(response).decode()
        try:
            if len(value) > self.max_entry:  # not kept: a later identical request asks again
                raise StorageError(f"an answer of {len(value)} characters is above the entry bound {self.max_entry}")
            store.fill(key, owner=owner, value=value)
        except StorageError:  # the answer was paid for: a store that cannot keep it costs a later request, not it
            with suppress(StorageError):  # a store that cannot release either: the claim ends with its lease
                store.release(key, owner=owner)
        return response


def cache_use(
    store: CallCache | None, step_cache: object, pipeline_cache: object, *, where: str, run_id: str = ""
) -> CacheUse | None:
    """The cache a step's requests use: `store` with the step's policy (its own `cache=`, else its pipeline's),
    its claims taken for run `run_id`; None when there is no store or the policy is off."""
    policy = cache_policy(step_cache, pipeline_cache, where=where)
    return None if store is None or policy is None else CacheUse(store, policy, run_id)
