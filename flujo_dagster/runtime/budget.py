"""Budgets per model request: Reserve, Execute, Reconcile.

`BudgetedModel` wraps the model an agent step runs on (pydantic-ai `WrapperModel`). Before each request it
reserves the request's worst case in every budget that applies (the serialized request's UTF-8 bytes as an
upper bound of its input tokens, plus its `max_tokens`, priced for the configured model), all or none. A request
that fits only once reservations in flight settle waits for them (first come, first served, on the ledger's queue)
up to the budgets' `max_wait`; one that could not fit even with none in flight, or still does not after the wait,
raises `UsageLimitExceededError` and never starts. After the response it
replaces the reservations by the actual cost (priced for the model that answered); a failed request releases
them. A response that reported no usage, or whose answering model has no price, keeps its worst case as spent.
A response above its reservation (a provider ignoring `max_tokens`) is recorded as an overshoot, halts the
budget's scope and fails the step. What each request was charged is added to the step's `Meter`, so that what
is reported matches the ledger.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_core import to_json

from flujo_dagster.dsl.budget import MAX_COUNT, Budget, is_token_count
from flujo_dagster.errors import ConfigurationError, UsageLimitExceededError
from flujo_dagster.pricing.ledger import (
    USD_NANOS,
    AdmittingLedger,
    BudgetLedger,
    Limits,
    Reservation,
    Usage,
    Waiting,
    new_reservation_id,
)
from flujo_dagster.pricing.prices import PriceBook, TokenUsage
from flujo_dagster.runtime.records import Charge, Meter

__all__ = [
    "LEASE_S",
    "BudgetContext",
    "BudgetedModel",
    "DayOf",
    "Guard",
    "budget_zone",
    "day_scope",
    "guard_for",
    "limits_of",
    "nanos",
]


LEASE_S = 15.0
"""How long a waiting request's place in the queue outlives its last try (it tries again every 200 ms at most):
the place of a process that was killed is given up after this."""

_BACKOFF_S = (0.02, 0.2)
"""The first and the longest pause between two tries of a waiting request (each pause 1.5 times the previous)."""


def nanos(usd: Decimal) -> int:
    """US dollars as whole nano-dollars, rounded up (a reservation never undercounts)."""
    return math.ceil(usd * USD_NANOS)


@dataclass(frozen=True)
class Guard:
    """One budget applied to a request: the ledger scope it charges and its limits. A per-day budget's scope is
    the pipeline's day at the moment each request is reserved, in the budget's timezone (`day`), followed by
    `scope` (`""`, or a step budget's `:step:<path>`)."""

    scope: str
    limits: Limits
    day: DayOf | None = None
    max_wait: timedelta = timedelta(0)
    """How long a request may wait for reservations in flight to settle before this budget refuses it."""

    def scope_at(self, when: datetime) -> str:
        """The ledger scope a request reserved at `when` charges."""
        if self.day is None:
            return self.scope
        return day_scope(self.day.pipeline, when.astimezone(self.day.zone).date().isoformat()) + self.scope


@dataclass(frozen=True)
class DayOf:
    """Whose day a per-day budget counts (a pipeline's) and in which time zone."""

    pipeline: str
    zone: tzinfo


def limits_of(budget: Budget) -> Limits:
    """The ledger limits of `budget`."""
    cost = None if budget.max_cost_usd is None else nanos(Decimal(budget.max_cost_usd))
    return Limits(max_usd_nanos=cost, max_tokens=budget.max_tokens)


def budget_zone(budget: Budget) -> ZoneInfo:
    """The time zone a per-day budget counts days in (`ConfigurationError` for a name that is not one: BUDGET-003)."""
    try:
        return ZoneInfo(budget.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigurationError(
            f"Budget timezone {budget.timezone!r} is not an IANA timezone name (BUDGET-003); use one such as "
            "'UTC' or 'Europe/Madrid'"
        ) from exc


def guard_for(budget: Budget, scope: str, *, pipeline: str | None = None) -> Guard:
    """The guard of `budget`: charged to ledger scope `scope`, or, for a per-day budget of `pipeline`, to that
    pipeline's day of each request followed by `scope`."""
    if budget.scope == "day" and pipeline is not None:
        return Guard(scope, limits_of(budget), DayOf(pipeline, budget_zone(budget)), budget.max_wait)
    return Guard(scope, limits_of(budget), max_wait=budget.max_wait)


def day_scope(pipeline: str, day: str) -> str:
    """The ledger scope of pipeline `pipeline`'s per-day budget on `day` (an ISO date, `2026-11-26`)."""
    return f"pipeline:{pipeline}:day:{day}"


@dataclass(frozen=True)
class BudgetContext:
    """What an agent step's requests are charged to: the ledger, the budgets (guards) that apply, the run
    recorded on each entry, and the prices."""

    ledger: BudgetLedger
    guards: tuple[Guard, ...]
    run_id: str
    prices: PriceBook
    dimensions: Mapping[str, str] = field(default_factory=dict)
    """Recorded with each entry to report the spend by (a partition key, a scheduled day); never a scope."""

    def reserve(self, amount: Usage, *, step: str) -> list[Reservation]:
        """Reserve `amount` for `step` in every guard's scope (per-day ones: today's, in the budget's timezone),
        or none of them (`UsageLimitExceededError`)."""
        held: list[Reservation] = []
        now = datetime.now(UTC)
        try:
            for guard in self.guards:
                scope, run_id = guard.scope_at(now), self.run_id
                if self.dimensions:  # only then: a ledger of your own may not take them
                    dims = dict(self.dimensions)
                    held.append(
                        self.ledger.reserve(scope, guard.limits, amount, run_id=run_id, step=step, dimensions=dims)
                    )
                else:
                    held.append(self.ledger.reserve(scope, guard.limits, amount, run_id=run_id, step=step))
        except BaseException:
            self.settle(held, None, release=True)
            raise
        return held

    async def admit(self, amount: Usage, *, step: str) -> list[Reservation]:
        """`reserve`, waiting while the request fits only once reservations in flight settle: first come, first
        served on the ledger's queue (a ledger that has none refuses at once), for at most the shortest `max_wait`
        of the guards. The request's place in the queue is given up however the wait ends (cancelled too)."""
        ledger = self.ledger
        bound = min(guard.max_wait for guard in self.guards).total_seconds()
        if not isinstance(ledger, AdmittingLedger) or bound <= 0:
            return self.reserve(amount, step=step)
        ticket, started, pause = new_reservation_id(), anyio.current_time(), _BACKOFF_S[0]
        dims = dict(self.dimensions) if self.dimensions else None
        queued = False  # whether the request has waited (its refusal then says for how long)
        admitted = False  # an admission removes the ticket; any other end leaves the queue (a no-op if not in it)
        try:
            while True:
                now = datetime.now(UTC)
                claims = [(guard.scope_at(now), guard.limits) for guard in self.guards]
                try:
                    outcome = ledger.admit(
                        claims, amount, ticket=ticket, lease_s=LEASE_S, run_id=self.run_id, step=step, dimensions=dims
                    )
                except UsageLimitExceededError as exc:
                    raise (_after_wait(exc, anyio.current_time() - started) if queued else exc) from None
                if not isinstance(outcome, Waiting):
                    admitted = True
                    return outcome
                queued = True
                waited = anyio.current_time() - started
                if waited >= bound:
                    raise _wait_error(outcome, self.run_id, step, waited, bound)
                await anyio.sleep(min(pause, bound - waited))
                pause = min(pause * 1.5, _BACKOFF_S[1])
        finally:
            if not admitted:
                ledger.leave(ticket)

    def settle(self, held: list[Reservation], actual: Usage | None, *, release: bool = False) -> list[Reservation]:
        """Close every reservation in `held` (released, or reconciled to `actual`, or to its own worst case
        when `actual` is None), even when closing one fails; the overshooting ones. The first error is raised
        after all were tried, so that none stays open."""
        overshoots: list[Reservation] = []
        errors: list[BaseException] = []
        for reservation in held:
            try:
                if release:
                    self.ledger.release(reservation)
                elif self.ledger.reconcile(reservation, actual or Usage(reservation.usd_nanos, reservation.tokens)):
                    overshoots.append(reservation)
            except Exception as exc:  # noqa: BLE001 (re-raised below, after the other reservations are closed)
                errors.append(exc)
        if errors:
            raise errors[0]
        return overshoots


def _wait_error(waiting: Waiting, run_id: str, step: str, waited: float, bound: float) -> UsageLimitExceededError:
    """The error of a request refused after waiting `waited` seconds (its budgets' `max_wait` is `bound`)."""
    return UsageLimitExceededError(
        f"Budget of scope {waiting.scope!r}: the request of run {run_id!r} step {step!r} waited {waited:.1f} s "
        f"(the Budget's max_wait, {bound:g} s) for requests in flight to settle, and was refused: {waiting.reason}. "
        "Nothing was reserved and the request did not start: raise the Budget's max_wait or max_cost_usd/max_tokens, "
        "lower the step's max_tokens, or run fewer requests at once."
    )


def _after_wait(refused: UsageLimitExceededError, waited: float) -> UsageLimitExceededError:
    """`refused` (a budget that can no longer fit the request, or halted), saying how long the request waited."""
    return UsageLimitExceededError(f"{refused} (It had waited {waited:.1f} s for requests in flight to settle.)")


def _overshoot_error(
    path: str, model_name: str | None, actual: Usage, overshoots: list[Reservation], max_tokens: int
) -> UsageLimitExceededError:
    """The error of a response that cost more than its reservations `overshoots` (the first one is quoted)."""
    first = overshoots[0]
    return UsageLimitExceededError(
        f"{path}: a response of {model_name!r} used {actual.tokens} tokens "
        f"(${Decimal(actual.usd_nanos) / USD_NANOS}), more than the {first.tokens} tokens "
        f"(${Decimal(first.usd_nanos) / USD_NANOS}) reserved for it (max_tokens={max_tokens}); recorded "
        f"as an overshoot in budget scope(s) {', '.join(r.scope for r in overshoots)}, which now refuse "
        "further requests. Check that the provider honours max_tokens."
    )


_REPORTED = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def _bad_usage(path: str, model_name: str | None, what: str) -> UsageLimitExceededError:
    """The error of a response whose usage the ledger cannot count (its reservation stays charged)."""
    return UsageLimitExceededError(
        f"{path}: model {model_name!r} reported {what}; the ledger cannot count that, so the request's reservation "
        "stays charged at its worst case and the step fails. Check the model (or its provider's usage report)."
    )


def _counted(model: BudgetedModel, response: ModelResponse) -> Usage | None:
    """`model.actual(response)`, after checking that the usage the model reported is countable: every token count
    an int from 0 to 2**62 - 1, their cost below 2**62 nano-dollars (else `UsageLimitExceededError` naming the
    step path, the model and the value; the ledger's own `ValueError` never reaches the user)."""
    for name in _REPORTED:
        value = getattr(response.usage, name, 0)
        if not is_token_count(value):
            raise _bad_usage(
                model.path, response.model_name, f"{name}={value!r}, not a token count from 0 to 2**62 - 1"
            )
    try:
        return model.actual(response)
    except ValueError as exc:  # Usage refuses an amount the ledger cannot sum
        usage = response.usage
        raise _bad_usage(
            model.path,
            response.model_name,
            f"usage too large to count (input_tokens={usage.input_tokens}, output_tokens={usage.output_tokens}: {exc})",
        ) from None


def _countable_worst(model: BudgetedModel, cost: int, size: int) -> Usage:
    """A request's worst case (`cost` nano-dollars, `size` bytes plus `max_tokens` tokens), or
    `UsageLimitExceededError` when it is more than the ledger can count."""
    if cost >= MAX_COUNT or size + model.max_tokens >= MAX_COUNT:
        raise UsageLimitExceededError(
            f"{model.path}: one request's worst case ({size} bytes + max_tokens={model.max_tokens} on "
            f"{model.configured!r}) is more than the budget ledger can count; lower max_tokens"
        )
    return Usage(usd_nanos=cost, tokens=size + model.max_tokens)


def _charge_worst(model: BudgetedModel, worst: Usage, answered: str, why: str, *, unknown: bool = False) -> None:
    """Add to `model`'s meter a request charged at its worst case `worst` (answered by `answered`), and why."""
    model.meter.add(
        Charge(
            model=answered,
            input_tokens=worst.tokens - model.max_tokens,
            output_tokens=model.max_tokens,
            cost_usd=Decimal(worst.usd_nanos) / USD_NANOS,
            price_source=f"reservation ({why})",
            usage_unknown=unknown,
            reserved_usd=Decimal(worst.usd_nanos) / USD_NANOS,
            reserved_tokens=worst.tokens,
        )
    )


class BudgetedModel(WrapperModel):
    """`wrapped`, with every request reserved before it starts and reconciled after it ends."""

    def __init__(
        self,
        wrapped: Model,
        *,
        budget: BudgetContext,
        path: str,
        configured: str,
        max_tokens: int,
        meter: Meter | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.budget = budget
        self.path = path
        self.configured = configured
        self.max_tokens = max_tokens
        self.meter = meter if meter is not None else Meter()  # what each settled request was charged

    def worst_case(self, messages: list[ModelMessage], parameters: ModelRequestParameters) -> Usage:
        """The most one request may cost: its serialized size in bytes as input tokens plus `max_tokens`."""
        size = len(ModelMessagesTypeAdapter.dump_json(messages)) + len(to_json(parameters))
        pricing = self.budget.prices.require(self.configured, where=self.path)
        cost = nanos(pricing.cost(TokenUsage(input_tokens=size, output_tokens=self.max_tokens)))
        return _countable_worst(self, cost, size)

    def answered(self, response: ModelResponse) -> str:
        """`provider:model` of the model that answered `response`."""
        provider = response.provider_name or self.configured.partition(":")[0]
        return f"{provider}:{response.model_name}"

    def actual(self, response: ModelResponse) -> Usage | None:
        """What `response` cost, priced for the model that answered it; None when it reported no usage
        (pydantic-ai's `unmeasured_requests`, or no token counted at all): then only its worst case is known.
        `PricingNotConfiguredError` when the answering model has no price."""
        pricing = self.budget.prices.require(self.answered(response), where=self.path)
        usage = response.usage
        if usage.unmeasured_requests or not (usage.input_tokens or usage.output_tokens):
            return None
        tokens = TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        return Usage(usd_nanos=nanos(pricing.cost(tokens)), tokens=usage.input_tokens + usage.output_tokens)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        settings = ModelSettings(**(model_settings or {}))
        settings["max_tokens"] = min(settings.get("max_tokens", self.max_tokens), self.max_tokens)
        budget = self.budget
        worst = self.worst_case(messages, model_request_parameters)
        held = await budget.admit(worst, step=self.path)
        try:
            response = await super().request(messages, settings, model_request_parameters)
        except anyio.get_cancelled_exc_class():
            # a timeout or a terminated run: the request may have been sent and billed, so its worst case counts
            budget.settle(held, None)
            _charge_worst(self, worst, self.configured, "request cut off")
            raise
        except BaseException:
            budget.settle(held, Usage(0, 0), release=True)
            raise
        try:
            actual = _counted(self, response)
        except BaseException as exc:
            # the request was answered (and billed) but cannot be priced or counted: keep the worst case as spent
            budget.settle(held, None)
            uncountable = isinstance(exc, UsageLimitExceededError)
            why = "usage not countable" if uncountable else f"no price for {self.answered(response)}"
            _charge_worst(self, worst, self.answered(response), why)
            raise
        if actual is None:  # no usage reported: the worst case is all that is known, so it is what counts
            budget.settle(held, None)
            _charge_worst(self, worst, self.answered(response), "usage unknown", unknown=True)
            return response
        overshoots = budget.settle(held, actual)
        usage = response.usage
        self.meter.add(
            Charge(
                model=self.answered(response),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cost_usd=Decimal(actual.usd_nanos) / USD_NANOS,
                price_source=self.budget.prices.require(self.answered(response), where=self.path).source,
                reserved_usd=Decimal(worst.usd_nanos) / USD_NANOS,
                reserved_tokens=worst.tokens,
            )
        )
        if overshoots:
            raise _overshoot_error(self.path, response.model_name, actual, overshoots, self.max_tokens)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: object = None,
    ) -> AsyncIterator[StreamedResponse]:
        raise ConfigurationError(f"{self.path}: streamed requests cannot be budgeted; run the agent without streaming")
        yield  # pragma: no cover (an async generator: the raise above always happens first)
