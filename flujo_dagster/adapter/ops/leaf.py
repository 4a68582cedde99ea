"""Op factories for leaf steps (one compile rule per kind) and the first op, `flujo_inputs`."""

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterLogManager,
    Failure,
    In,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    RetryRequested,
)

from flujo_dagster import names
from flujo_dagster.adapter.ops.injection import OpInjector, step_resource_keys
from flujo_dagster.adapter.ops.input_config import INPUTS_CONFIG_KEY, inputs_config_field
from flujo_dagster.adapter.ops.subset import check_subset_upstream
from flujo_dagster.adapter.storage.budgets import OpBudgets, chain_of
from flujo_dagster.adapter.storage.call_cache import call_cache_of
from flujo_dagster.adapter.storage.call_files import call_log_for, store_calls
from flujo_dagster.adapter.storage.resources import AgentRuntime, PricedAgents
from flujo_dagster.adapter.storage.types import KeyType, key_type
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import (
    AGENT_RUNTIME_KEY,
    BUDGET_LEDGER_KEY,
    CALL_CACHE_KEY,
    GATE_INPUT,
    IO_MANAGER_KEY,
    PRICE_BOOK_KEY,
    READY_OUTPUT,
    io_name,
)
from flujo_dagster.pricing.prices import PriceBook
from flujo_dagster.runtime.cache import CacheUse, cache_use
from flujo_dagster.runtime.call_records import CallLog
from flujo_dagster.runtime.inputs import validate_inputs
from flujo_dagster.runtime.leaf import LeafExecutor, LeafResult
from flujo_dagster.runtime.records import StepRecord
from flujo_dagster.runtime.retries import NEVER_RETRIED
from flujo_dagster.validation.schedules import partition_input

__all__ = [
    "OP_RULES",
    "OpReporter",
    "StepWiring",
    "call_metadata",
    "failed_with_costs",
    "inputs_op",
    "ins_for",
    "not_retried",
    "outs_for",
    "priced_agents",
    "step_op",
    "trimmed",
]


@dataclass(frozen=True, kw_only=True)
class StepWiring:
    """What the compiler decided for one step: its node name, op definition name, path, keys read and written.

    The node name (the step's name) is what the UI and step keys show; the definition name is prefixed with
    the pipeline's name, because Dagster wants op definitions unique across a code location.
    """

    op: str
    definition: str
    path: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    split: bool = False
    gated: bool = False
    optional: frozenset[str] = frozenset()
    """Written keys the op may not produce (an inline branch that did not write them)."""


def _ktype(pipeline: Pipeline, key: str) -> KeyType:
    return key_type(pipeline.name, key, pipeline.fields[key])


def ins_for(pipeline: Pipeline, reads: tuple[str, ...], *, gated: bool = False) -> dict[str, In]:
    """One typed `In` per key read, plus the gate input when the op sits in a case or loop iteration."""
    ins = {io_name(k): In(_ktype(pipeline, k)) for k in reads}
    if gated:
        ins[GATE_INPUT] = In(Nothing)
    return ins


def outs_for(pipeline: Pipeline, writes: tuple[str, ...], optional: frozenset[str] = frozenset()) -> dict[str, Out]:
    """One typed `Out` per key written, stored by the flujo IO manager."""
    return {
        io_name(k): Out(_ktype(pipeline, k), io_manager_key=IO_MANAGER_KEY, is_required=k not in optional)
        for k in writes
    }


def not_retried(exc: BaseException, wiring: StepWiring, metadata: Mapping[str, Any] | None = None) -> Failure:
    """One of our errors that fails a step on its first attempt (`runtime.retries.NEVER_RETRIED`), as a
    `Failure(allow_retries=False)` naming its class and the step path, chained from the original (see
    `trimmed`); `metadata` (what the step's agent calls were charged) is added to the failure's."""
    where = "" if str(exc).startswith(f"{wiring.path}: ") else f" at {wiring.path}"  # said once
    failure = Failure(
        description=f"{type(exc).__name__}{where}: {exc}",
        metadata={**(metadata or {}), names.STEP_PATH: wiring.path, names.ERROR_CLASS: type(exc).__name__},
        allow_retries=False,
    )
    failure.__cause__ = trimmed(exc)
    return failure


def trimmed(exc: BaseException) -> BaseException:
    """`exc` as the cause of a step's failure. A `ConfigurationError` says in its message what is wrong, where
    and what to set (a missing API key is one line), so the step's event log keeps its message without its
    traceback through flujo and the provider's internals, or what it was chained from; other errors unchanged."""
    if not isinstance(exc, ConfigurationError):
        return exc
    exc.__cause__ = None
    exc.__suppress_context__ = True
    return exc.with_traceback(None)


def failed_with_costs(exc: Exception, wiring: StepWiring, metadata: Mapping[str, Any]) -> Exception:
    """A step's own error, when its agent calls were charged before it failed: a `Failure` with the same class
    name and message, chained from it, that carries `metadata` (what was charged) on the step's failure event
    and keeps its retry semantics (`allow_retries` as the error's own). A `RetryRequested` or an error that
    charged nothing is returned unchanged (raise the result `from exc`)."""
    if not metadata or isinstance(exc, RetryRequested):
        return exc
    if isinstance(exc, Failure):
        return Failure(exc.description, {**exc.metadata, **metadata}, allow_retries=exc.allow_retries)
    where = "" if str(exc).startswith(f"{wiring.path}: ") else f" at {wiring.path}"
    return Failure(
        description=f"{type(exc).__name__}{where}: {exc}",
        metadata={**metadata, names.STEP_PATH: wiring.path, names.ERROR_CLASS: type(exc).__name__},
        allow_retries=getattr(exc, "allow_retries", True) is not False,
    )


def call_metadata(record: StepRecord) -> dict[str, Any]:
    """An agent step's metadata: the model that answered, tokens, requests, cost (every attempt's charges, as
    the budget ledger recorded them) and price source; `flujo/usage_unknown` when a response reported no usage;
    `flujo/cache_hits` and `flujo/saved_cost_usd` when requests were served from the call cache."""
    metadata: dict[str, Any] = {
        names.STEP_PATH: record.path,
        names.MODEL: record.model or "unknown",
        names.MODEL_SOURCE: record.model_source or "",
        names.INPUT_TOKENS: record.input_tokens,
        names.OUTPUT_TOKENS: record.output_tokens,
        names.CACHE_READ_TOKENS: record.cache_read_tokens,
        names.REQUESTS: record.requests,
        names.COST_USD: float(record.cost_usd or 0),
        names.PRICE_SOURCE: record.price_source or "",
    }
    if record.usage_unknown:
        metadata[names.USAGE_UNKNOWN] = True
    if record.cache_hits:
        metadata[names.CACHE_HITS] = record.cache_hits
        metadata[names.SAVED_COST_USD] = float(record.saved_cost_usd)
    return metadata


class OpReporter:
    """The leaf executor's reporter inside one op: logs each failed attempt that will be tried again (a
    warning in the run's event log) and keeps the record of every step that finished."""

    def __init__(self, log: DagsterLogManager) -> None:
        self.log = log
        self.records: list[StepRecord] = []

    def step_finished(self, record: StepRecord) -> None:
        """Keep the record; warn when a model reported no usage (its reservation was charged)."""
        self.records.append(record)
        if record.usage_unknown:
            self.log.warning(
                f"{record.path}: model {record.model} answered without reporting its usage; the call is charged "
                f"at ${record.cost_usd or 0:.6f} ({record.price_source}) and marked {names.USAGE_UNKNOWN}. Check "
                "that the provider reports token usage."
            )

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None:
        """Log the failed attempt."""
        self.log.warning(
            f"{path}: attempt {attempt} of {attempts} failed with {type(error).__name__}: {error}; "
            f"trying again in {delay_s:g} s"
        )


def priced_agents(
    context: OpExecutionContext,
    pipeline: Pipeline,
    pools: Mapping[str, int] | None = None,
    steps: Sequence[AgentStep] = (),
) -> PricedAgents:
    """The agent runner of an op: the run's `AgentRuntime` with its price book, budgets and call cache (and,
    inside an inline op, the limits of the Dagster concurrency pools its agent steps use), recording every call
    of the agent `steps` the op runs (`calls`: stored with `store_calls`)."""
    book: PriceBook = getattr(context.resources, PRICE_BOOK_KEY)
    budgets = OpBudgets(context, pipeline, book)
    runtime: AgentRuntime = getattr(context.resources, AGENT_RUNTIME_KEY)
    runtime.check_step_models(pipeline)  # a run's config naming no agent step fails here, before any call
    store = call_cache_of(getattr(context.resources, CALL_CACHE_KEY), context.instance)
    recovered = threading.Event()

    def cache_for(step: AgentStep, path: str) -> CacheUse | None:
        use = cache_use(store, step.cache, pipeline.cache, where=path, run_id=context.run_id)
        if use is not None and not recovered.is_set():  # once per op, before its first cached request
            for ancestor in chain_of(context.run, context.instance)[1:]:
                store.release_run(ancestor.run_id)  # a finished run's claims were left by a killed process
            recovered.set()
        return use

    return PricedAgents(runtime, book, budgets.for_step, pools, calls=call_log_for(runtime, steps), cache_for=cache_for)


async def _run_leaf(
    context: OpExecutionContext,
    pipeline: Pipeline,
    step: Step,
    wiring: StepWiring,
    inputs: Mapping[str, Any],
    agents: PricedAgents | None,
) -> tuple[LeafResult, dict[str, Any]]:
    """Run the op's step on the leaf executor (retries in this process, as inside an inline op); the result and
    the metadata linking its agent calls' records. When it fails after its agent calls were charged, the failure
    event carries what they cost (and links their records)."""
    reporter = OpReporter(context.log)
    executor = LeafExecutor(fields=pipeline.fields, agents=agents, reporter=reporter, injector=OpInjector(context))
    calls: CallLog | None = agents.calls if agents is not None else None
    try:
        result = await executor.run(step, {k: inputs[io_name(k)] for k in wiring.reads}, wiring.path)
    except NEVER_RETRIED as exc:
        raise not_retried(exc, wiring, {**_charged(reporter), **store_calls(context, calls, wiring.path)}) from exc
    except Exception as exc:
        linked = store_calls(context, calls, wiring.path)
        charged = _charged(reporter)
        raised = failed_with_costs(exc, wiring, {**charged, **linked} if charged else {})
        if raised is exc:
            raise
        raise raised from exc
    return result, store_calls(context, calls, wiring.path)


def _charged(reporter: OpReporter) -> dict[str, Any]:
    """The metadata of the failed step's agent calls, if any were charged."""
    charged = [r for r in reporter.records if r.model is not None]
    return call_metadata(charged[-1]) if charged else {}


def _function_op(pipeline: Pipeline, step: Step, wiring: StepWiring) -> OpDefinition:
    assert isinstance(step, FunctionStep)

    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Output[Any]]:
        result, _ = await _run_leaf(context, pipeline, step, wiring, inputs, None)
        for key in wiring.writes:
            yield Output(result.values[key], io_name(key))

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=ins_for(pipeline, wiring.reads, gated=wiring.gated),
        outs=outs_for(pipeline, wiring.writes),
        description=(step.fn.__doc__ or f"function step {wiring.path}").strip(),
        required_resource_keys=step_resource_keys([step]),
        tags=names.op_tags(names.OpKind.FUNCTION, wiring.path),
    )


def _agent_op(pipeline: Pipeline, step: Step, wiring: StepWiring) -> OpDefinition:
    assert isinstance(step, AgentStep)
    (key,) = wiring.writes

    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Output[Any]]:
        agents = priced_agents(context, pipeline, steps=[step])
        result, linked = await _run_leaf(context, pipeline, step, wiring, inputs, agents)
        assert result.call is not None
        yield Output(result.values[key], io_name(key), metadata={**call_metadata(result.record), **linked})

    prompt_text = step.prompt if isinstance(step.prompt, str) else f"callable {step.prompt.__name__}"
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=ins_for(pipeline, wiring.reads, gated=wiring.gated),
        outs=outs_for(pipeline, wiring.writes),
        description=f"agent step {wiring.path} on {step.model_id()}; prompt: {prompt_text}",
        required_resource_keys={
            AGENT_RUNTIME_KEY,
            PRICE_BOOK_KEY,
            BUDGET_LEDGER_KEY,
            IO_MANAGER_KEY,
            CALL_CACHE_KEY,
            *step_resource_keys([step]),
        },
        pool=step.pool_name(),
        tags={**names.op_tags(names.OpKind.AGENT, wiring.path), names.MODEL: step.model_id() or "unknown"},
    )


OpRule = Callable[[Pipeline, Step, StepWiring], OpDefinition]

#: One compile rule per step kind; adding a kind adds a row here.
OP_RULES: dict[type[Step], OpRule] = {FunctionStep: _function_op, AgentStep: _agent_op}


def step_op(pipeline: Pipeline, step: Step, wiring: StepWiring) -> OpDefinition:
    """The op for one step, by its kind's compile rule."""
    rule = OP_RULES.get(type(step))
    if rule is None:
        raise ConfigurationError(f"no compile rule for step kind {type(step).__name__} at {wiring.path}")
    return rule(pipeline, step, wiring)


def inputs_op(pipeline: Pipeline, name: str, emitted: tuple[str, ...]) -> OpDefinition:
    """The first op: validates the run's `inputs` mapping with the context model (in a subset run, that the values
    it loads were materialized: `check_subset_upstream`), emits the initial keys. Its config schema types each
    input (`input_config`), so Dagster refuses what it can check before the run."""

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        raw = partitioned_inputs(pipeline, context, (context.op_config or {}).get(INPUTS_CONFIG_KEY) or {})
        values = validate_inputs(pipeline, raw)
        check_subset_upstream(context, pipeline.name)
        for key in emitted:
            yield Output(values[key], io_name(key))
        if not emitted:
            yield Output(None, READY_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={},
        outs=outs_for(pipeline, emitted) if emitted else {READY_OUTPUT: Out(Nothing)},
        config_schema={INPUTS_CONFIG_KEY: inputs_config_field(pipeline)},
        description=f"Validates the run inputs of pipeline {pipeline.name!r} with {pipeline.context.__name__}.",
        tags=names.op_tags(names.OpKind.INPUTS),
    )


def partitioned_inputs(
    pipeline: Pipeline, context: OpExecutionContext, raw: Mapping[str, object]
) -> Mapping[str, object]:
    """The run inputs with the partition key filled in (unchanged for an unpartitioned pipeline).

    Raises `ConfigurationError` when a partitioned pipeline runs without a partition key, or when the inputs
    give the partition field a different value."""
    key = partition_input(pipeline)
    if key is None:
        return raw
    if not context.has_partition_key:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r} is partitioned: launch its runs for a partition (a backfill, the UI's "
            "partition picker, or execute_in_process/materialize with partition_key=...)"
        )
    value = context.partition_key
    if key in raw and str(raw[key]) != value:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r}: input {key!r}={raw[key]!r} contradicts the run's partition key "
            f"{value!r}; leave {key!r} out of the inputs (the partition key fills it)"
        )
    return {**raw, key: value}
