"""Op factories: one compile rule per step kind, plus the first (`flujo_inputs`) and last (`flujo_context`) ops."""

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from dagster import Any as DagsterAny
from dagster import (
    Backoff,
    DagsterRun,
    Failure,
    Field,
    In,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    Permissive,
    RetryPolicy,
)
from pydantic import ValidationError
from pydantic_core import to_json

from flujo_dagster.adapter import metadata as md
from flujo_dagster.adapter.io_manager import PydanticJsonIOManager, StoredKey
from flujo_dagster.adapter.naming import CONTEXT_KEY, CONTEXT_OUTPUT, READY_OUTPUT, io_name
from flujo_dagster.adapter.resources import AgentRuntime
from flujo_dagster.adapter.types import KeyType, key_type
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Retry, Step
from flujo_dagster.errors import (
    ConfigurationError,
    StepOutputError,
    StorageError,
    UsageLimitExceededError,
)
from flujo_dagster.runtime.calls import call_function_step
from flujo_dagster.runtime.inputs import validate_inputs
from flujo_dagster.runtime.prompts import render_prompt
from flujo_dagster.validation.typecompat import type_name

__all__ = ["OP_RULES", "StepWiring", "context_op", "inputs_op", "step_op"]

IO_MANAGER_KEY = "flujo_io_manager"
AGENT_RUNTIME_KEY = "agent_runtime"
_NOT_RETRIED = (ConfigurationError, UsageLimitExceededError)


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
    split: bool


def _retry_policy(retry: Retry) -> RetryPolicy | None:
    if retry.max_retries <= 0:
        return None
    backoff = {"constant": None, "linear": Backoff.LINEAR, "exponential": Backoff.EXPONENTIAL}[retry.backoff]
    return RetryPolicy(max_retries=retry.max_retries, delay=retry.delay_s, backoff=backoff)


def _ktype(pipeline: Pipeline, key: str) -> KeyType:
    return key_type(pipeline.name, key, pipeline.fields[key])


def _ins(pipeline: Pipeline, reads: tuple[str, ...]) -> dict[str, In]:
    return {io_name(k): In(_ktype(pipeline, k)) for k in reads}


def _outs(pipeline: Pipeline, writes: tuple[str, ...]) -> dict[str, Out]:
    return {io_name(k): Out(_ktype(pipeline, k), io_manager_key=IO_MANAGER_KEY) for k in writes}


def _coerce(pipeline: Pipeline, wiring: StepWiring, key: str, value: object) -> object:
    ktype = _ktype(pipeline, key)
    try:
        return ktype.coerce(value)
    except ValidationError as exc:
        raise StepOutputError(
            f"step {wiring.path} returned a value for key {key!r} that is not a {type_name(ktype.annotation)}: "
            f"{exc}. Return a {type_name(ktype.annotation)}, or change the context field."
        ) from exc


def _split(wiring: StepWiring, result: object) -> Iterator[tuple[str, object]]:
    if not wiring.split:
        yield wiring.writes[0], result
        return
    for key in wiring.writes:
        if isinstance(result, Mapping):
            if key not in result:
                raise StepOutputError(
                    f"step {wiring.path} returned no value for key {key!r}; it writes {wiring.writes}."
                )
            yield key, result[key]
        elif hasattr(result, key):
            yield key, getattr(result, key)
        else:
            raise StepOutputError(
                f"step {wiring.path} returned {type(result).__name__}, which has no attribute {key!r}; it writes "
                f"{wiring.writes}: return a model or mapping with those names."
            )


def _not_retried(exc: BaseException, wiring: StepWiring) -> Failure:
    return Failure(
        description=f"{type(exc).__name__} at {wiring.path}: {exc}",
        metadata={md.STEP_PATH: wiring.path, "flujo/error_class": type(exc).__name__},
        allow_retries=False,
    )


def _function_op(pipeline: Pipeline, step: Step, wiring: StepWiring) -> OpDefinition:
    assert isinstance(step, FunctionStep)

    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Output[Any]]:
        kwargs = {k: inputs[io_name(k)] for k in wiring.reads}
        try:
            result = await call_function_step(step, kwargs, path=wiring.path)
        except _NOT_RETRIED as exc:
            raise _not_retried(exc, wiring) from exc
        for key, value in _split(wiring, result):
            yield Output(_coerce(pipeline, wiring, key, value), io_name(key))

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=_ins(pipeline, wiring.reads),
        outs=_outs(pipeline, wiring.writes),
        description=(step.fn.__doc__ or f"function step {wiring.path}").strip(),
        retry_policy=_retry_policy(step.retry),
        tags={md.KIND: "function", md.STEP_PATH: wiring.path},
    )


def _agent_op(pipeline: Pipeline, step: Step, wiring: StepWiring) -> OpDefinition:
    assert isinstance(step, AgentStep)
    (key,) = wiring.writes

    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Output[Any]]:
        runtime: AgentRuntime = getattr(context.resources, AGENT_RUNTIME_KEY)
        prompt = render_prompt(step, {k: inputs[io_name(k)] for k in wiring.reads})
        try:
            if step.timeout_s is None:
                call, source = await runtime.run(step, prompt)
            else:
                with anyio.fail_after(step.timeout_s):
                    call, source = await runtime.run(step, prompt)
        except _NOT_RETRIED as exc:
            raise _not_retried(exc, wiring) from exc
        yield Output(
            _coerce(pipeline, wiring, key, call.output),
            io_name(key),
            metadata={
                md.STEP_PATH: wiring.path,
                md.MODEL: call.model,
                md.MODEL_SOURCE: source,
                md.INPUT_TOKENS: call.input_tokens,
                md.OUTPUT_TOKENS: call.output_tokens,
                md.CACHE_READ_TOKENS: call.cache_read_tokens,
                md.REQUESTS: call.requests,
            },
        )

    prompt_text = step.prompt if isinstance(step.prompt, str) else f"callable {step.prompt.__name__}"
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=_ins(pipeline, wiring.reads),
        outs=_outs(pipeline, wiring.writes),
        description=f"agent step {wiring.path} on {step.model_id()}; prompt: {prompt_text}",
        required_resource_keys={AGENT_RUNTIME_KEY},
        retry_policy=_retry_policy(step.retry),
        tags={md.KIND: "agent", md.STEP_PATH: wiring.path, md.MODEL: step.model_id() or "unknown"},
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
    """The first op: validates the run's `inputs` mapping with the context model, emits the initial keys."""
    required = set(pipeline.input_keys())
    fields = {k: Field(DagsterAny, is_required=k in required) for k in pipeline.initial_keys()}
    inputs_schema = Permissive(fields)  # type: ignore[no-untyped-call]

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        raw = (context.op_config or {}).get("inputs") or {}
        values = validate_inputs(pipeline, raw)
        for key in emitted:
            yield Output(values[key], io_name(key))
        if not emitted:
            yield Output(None, READY_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={},
        outs=_outs(pipeline, emitted) if emitted else {READY_OUTPUT: Out(Nothing)},
        config_schema={"inputs": Field(inputs_schema, is_required=bool(required))},
        description=f"Validates the run inputs of pipeline {pipeline.name!r} with {pipeline.context.__name__}.",
        tags={md.KIND: "inputs"},
    )


def _producing_run(context: OpExecutionContext, step_key: str, cache: dict[str, DagsterRun]) -> str:
    """The run (this one or an ancestor) whose storage holds `step_key`'s outputs."""
    run = context.run
    while True:
        keys = run.step_keys_to_execute
        if keys is None or step_key in keys or run.parent_run_id is None:
            return run.run_id
        parent = cache.get(run.parent_run_id) or context.instance.get_run_by_id(run.parent_run_id)
        if parent is None:
            return run.run_id
        cache[run.parent_run_id] = parent
        run = parent


def context_op(
    pipeline: Pipeline, name: str, producers: Mapping[str, tuple[str, str]], *, step_key: Callable[[str], str]
) -> OpDefinition:
    """The last op: reads every key's live value and returns the validated context.

    It depends on every producer through one fan-in `Nothing` input (so it runs even when some producer was
    skipped) and reads the values from the flujo IO manager itself, which costs no event per key.
    `producers` maps each key to (node name, output name); `step_key` gives a node's step key in the job.
    """
    context_type = key_type(pipeline.name, CONTEXT_KEY, pipeline.context)

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        io: PydanticJsonIOManager = getattr(context.resources, IO_MANAGER_KEY)
        root = io.root(context.instance.storage_directory())
        runs: dict[str, DagsterRun] = {}
        values: dict[str, object] = {}
        for key, (op, output) in producers.items():
            producer_key = step_key(op)
            run_id = _producing_run(context, producer_key, runs)
            path = io.output_path(root, run_id, producer_key, output)
            if not path.exists():
                raise StorageError(
                    f"key {key!r} of pipeline {pipeline.name!r} was never produced: step {op!r} did not write "
                    f"it in run {run_id} (expected {path}). Check the event log of step {op!r}."
                )
            values[key] = io.read(path, StoredKey(key, pipeline.fields[key]), where=f"run {run_id}, step {op}")
        # through the JSON form: python-mode validation is not idempotent for every type (Base64Bytes)
        dumped = {
            k: _ktype(pipeline, k).adapter.dump_python(v, mode="python", round_trip=True) for k, v in values.items()
        }
        try:
            final = pipeline.context.model_validate_json(to_json(dumped, inf_nan_mode="constants"))
        except ValidationError as exc:
            raise StepOutputError(
                f"the final context of pipeline {pipeline.name!r} does not validate as "
                f"{pipeline.context.__name__}: {exc}"
            ) from exc
        yield Output(final, CONTEXT_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={"after": In(Nothing)},
        outs={CONTEXT_OUTPUT: Out(context_type, io_manager_key=IO_MANAGER_KEY)},
        required_resource_keys={IO_MANAGER_KEY},
        description=f"Assembles and validates the final {pipeline.context.__name__} of pipeline {pipeline.name!r}.",
        tags={md.KIND: "context"},
    )
