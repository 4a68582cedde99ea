"""Asset review and checks for graph-backed assets: the op that produces an asset key is wrapped so that its
materialization carries review metadata (see `review`) and, right after the value is stored, the asset's checks
run in the same op (the type check `flujo_type`, then the user's `Check`s). A failing blocking check fails that
op, so nothing downstream of it runs in the run."""

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    Failure,
    In,
    MetadataValue,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
)
from pydantic import BaseModel, ValidationError

from flujo_dagster import names
from flujo_dagster.adapter.control.costs import AgentCallSummary, metadata_calls
from flujo_dagster.adapter.ops.review import (
    RegionEvents,
    approval_record,
    gate_entry,
    gate_records,
    plain,
    region_calls,
    review_metadata,
)
from flujo_dagster.adapter.storage.io_manager import Origin, PydanticJsonIOManager, StoredKey
from flujo_dagster.dsl.checks import Check
from flujo_dagster.errors import ConfigurationError, StorageError
from flujo_dagster.names import (
    AFTER_INPUT,
    APPROVAL_PREFIX,
    CONTEXT_KEY,
    CONTEXT_OUTPUT,
    IO_MANAGER_KEY,
)
from flujo_dagster.runtime.values import coerce_value
from flujo_dagster.validation.typecompat import type_name

__all__ = ["AssetPlan", "checked_op", "context_check_op"]


@dataclass(frozen=True, kw_only=True)
class AssetPlan:
    """One asset output of a producing op: its key, the steps it is made from, its checks."""

    output: str
    key: str
    asset_key: AssetKey
    region: frozenset[str]
    """Step keys of the steps that produced the value: upstream of the producer, up to the nearest assets."""
    upstream: frozenset[str]
    """Step keys of every step the value depends on: `region` and everything upstream of it, other assets'
    producers and their regions included."""
    gates: frozenset[str]
    """Step keys of the approval gates in `region` that show the key."""
    approvals: frozenset[str] = frozenset()
    """Step keys of every approval gate in `upstream`: their decisions ride on the asset (`flujo/approvals`)."""
    checks: tuple[tuple[AssetCheckSpec, Check | None], ...]
    """Each check spec and the user's check (None for the type check)."""


@dataclass
class _State:
    """What one execution of a wrapped op has seen so far."""

    calls: list[AgentCallSummary] = field(default_factory=list)
    events: RegionEvents | None = None


def _reviewed(
    context: OpExecutionContext, definition: OpDefinition, out: Output[Any], plan: AssetPlan, state: _State
) -> Output[Any]:
    """`out` with the review metadata: preview, type, cost, tokens, models, approval record."""
    own = plain(out.metadata)
    step = context.get_step_execution_context().step.key
    if state.events is None and (plan.upstream - {step} or plan.gates):  # no query when only this step made it
        state.events = RegionEvents.load(context.instance, context.run_id, exclude_step=step)
    events = state.events or RegionEvents(())
    stored = StoredKey.of(definition.output_def_named(plan.output).dagster_type, plan.key)
    calls = [*region_calls(events, plan.region), *state.calls]
    metadata = review_metadata(out.value, stored.annotation, type_name(stored.annotation), calls)
    upstream = [*region_calls(events, plan.upstream), *state.calls]
    metadata[names.UPSTREAM_COST_USD] = float(sum((c.cost_usd for c in upstream), Decimal(0)))
    if not any(k.startswith(APPROVAL_PREFIX) for k in own):
        metadata.update(approval_record(events, plan.gates))
    if plan.approvals or own.get(APPROVAL_PREFIX + "verdict"):
        records = gate_records(context.instance, context.run, plan.approvals) if plan.approvals else []
        if own.get(APPROVAL_PREFIX + "verdict"):  # written by a gate: its own record too, last
            records.append(gate_entry(own, context.run_id))
        if records:
            metadata[names.APPROVALS] = MetadataValue.json(records)
    return out.with_metadata({**out.metadata, **metadata})


def _load(context: OpExecutionContext, definition: OpDefinition, plan: AssetPlan, value: object) -> object:
    """The value as stored (read back through the flujo IO manager), or, with another IO manager, `value`
    validated as its type. Raises `StorageError` or pydantic's `ValidationError`."""
    stored = StoredKey.of(definition.output_def_named(plan.output).dagster_type, plan.key)
    io = getattr(context.resources, IO_MANAGER_KEY)
    if not isinstance(io, PydanticJsonIOManager):
        return coerce_value(stored.adapter, value)
    step = context.get_step_execution_context().step.key
    root = io.root(context.instance.storage_directory())
    path = io.output_path(root, context.run_id, step, plan.output)
    return io.read(path, stored, where=Origin(context.run_id, step), root=root)


def _evaluate(
    context: OpExecutionContext, definition: OpDefinition, plan: AssetPlan, value: object
) -> tuple[list[AssetCheckResult], list[str]]:
    """Every check of `plan`'s asset and the failures of its blocking ones."""
    try:
        loaded, error = _load(context, definition, plan, value), None
    except (StorageError, ValidationError) as exc:
        loaded, error = None, str(exc)
    results: list[AssetCheckResult] = []
    blocked: list[str] = []
    for spec, check in plan.checks:
        if check is None:
            passed, detail = error is None, error or "the stored value loads back as its declared type"
        elif error is not None:
            passed, detail = False, "not evaluated: the stored value does not load back as its declared type"
        else:
            try:
                passed = bool(check.fn(loaded))
                detail = "passed" if passed else f"{spec.name} returned a false value for this materialization"
            except Exception as exc:  # noqa: BLE001 - reported as this check's failed evaluation, with the error
                passed, detail = False, f"{spec.name} raised {type(exc).__name__}: {exc}"
        severity = AssetCheckSeverity.ERROR if spec.blocking else AssetCheckSeverity.WARN
        results.append(
            AssetCheckResult(
                asset_key=plan.asset_key,
                check_name=spec.name,
                passed=passed,
                severity=severity,
                description=detail,
                metadata={names.CHECK_RESULT: detail},
            )
        )
        if not passed and spec.blocking:
            blocked.append(f"{spec.name} ({detail})")
    return results, blocked


def _blocked(plan: AssetPlan, node: str, blocked: list[str]) -> Failure:
    return Failure(
        description=(
            f"blocking check(s) on asset {plan.asset_key.to_user_string()} failed in step {node!r}: "
            f"{'; '.join(blocked)}. The steps after it do not run; fix the value or the check and re-execute."
        ),
        metadata={names.CHECK_ASSET: plan.asset_key.to_user_string(), names.CHECK_FAILED: ", ".join(blocked)},
        allow_retries=False,
    )


def checked_op(definition: OpDefinition, plans: Sequence[AssetPlan], *, name: str) -> OpDefinition:
    """`definition` with review metadata on its asset outputs and its assets' checks evaluated right after each
    is stored (one optional `Nothing` output per check, mapped to the graph's check outputs)."""
    by_output = {p.output: p for p in plans}
    inner = definition.compute_fn
    if not callable(inner) or not (inspect.isasyncgenfunction(inner) or inspect.isgeneratorfunction(inner)):
        raise ConfigurationError(f"op {definition.name!r} produces an asset but its compute is not a generator")

    def handle(context: OpExecutionContext, event: object, state: _State) -> Iterator[Any]:
        if not isinstance(event, Output):
            yield event
            return
        state.calls.extend(metadata_calls(plain(event.metadata), context.run_id))
        plan = by_output.get(event.output_name)
        if plan is None:
            yield event
            return
        yield _reviewed(context, definition, event, plan, state)  # stored before the generator resumes
        results, blocked = _evaluate(context, definition, plan, event.value)
        yield from results
        if blocked:
            raise _blocked(plan, context.op_handle.name, blocked)

    compute: Callable[..., Any]
    if inspect.isasyncgenfunction(inner):
        agen = cast(Callable[[OpExecutionContext, dict[str, Any]], AsyncIterator[Any]], inner)

        async def acompute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Any]:
            state = _State()
            async for event in agen(context, inputs):
                for item in handle(context, event, state):
                    yield item

        compute = acompute
    else:
        gen = cast(Callable[[OpExecutionContext, dict[str, Any]], Iterator[Any]], inner)

        def scompute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Any]:
            state = _State()
            for event in gen(context, inputs):
                yield from handle(context, event, state)

        compute = scompute

    check_outs = {spec.get_python_identifier(): Out(Nothing, is_required=False) for p in plans for spec, _ in p.checks}
    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={i.name: In.from_definition(i) for i in definition.input_defs},
        outs={**{o.name: Out.from_definition(o) for o in definition.output_defs}, **check_outs},
        config_schema=definition.config_schema,
        description=definition.description,
        tags=definition.tags,
        required_resource_keys={*definition.required_resource_keys, IO_MANAGER_KEY},
        retry_policy=definition.retry_policy,
        pool=definition.pool,
    )


def context_check_op(name: str, model: type[BaseModel], spec: AssetCheckSpec, *, context_step: str) -> OpDefinition:
    """The op after `flujo_context` when the final context is not an asset: it reads the stored final context
    back as `model` and reports the result as `spec` (`flujo_final_context`, on another asset of the pipeline).
    Its check output is what keeps `flujo_context` inside the graph-backed asset: Dagster runs an op there only
    when it leads to an asset or a check. With an IO manager other than flujo's, the context op's own validation
    stands (nothing to read back)."""
    stored = StoredKey(CONTEXT_KEY, model)

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Any]:
        io = getattr(context.resources, IO_MANAGER_KEY)
        passed, detail = True, f"the run's final context validated as {model.__name__} and was stored"
        if isinstance(io, PydanticJsonIOManager):
            root = io.root(context.instance.storage_directory())
            path = io.output_path(root, context.run_id, context_step, CONTEXT_OUTPUT)
            try:
                io.read(path, stored, where=Origin(context.run_id, context_step), root=root)
            except (StorageError, ValidationError) as exc:
                passed, detail = False, str(exc)
        yield AssetCheckResult(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=detail,
            metadata={names.CHECK_RESULT: detail},
        )
        if not passed:
            raise Failure(
                description=f"the final context of run {context.run_id} does not load back: {detail}",
                metadata={names.CHECK_ASSET: spec.asset_key.to_user_string(), names.CHECK_FAILED: spec.name},
                allow_retries=False,
            )

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={AFTER_INPUT: In(Nothing)},
        outs={spec.get_python_identifier(): Out(Nothing, is_required=False)},
        required_resource_keys={IO_MANAGER_KEY},
        description=f"Reads the stored final {model.__name__} back and reports check {spec.name!r}.",
        tags=names.op_tags(names.OpKind.CONTEXT_CHECK),
    )
