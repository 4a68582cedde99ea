"""Ops that carry control flow: branch routers, loop gates, the joins after them, inline groups, and the last
op (`flujo_context`). Joins and the last op read values from the flujo IO manager's storage themselves: they
know which producer holds each key on the path that ran, and a Dagster input per key would cost two events."""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dagster import DagsterRun, In, MetadataValue, Nothing, OpDefinition, OpExecutionContext, Out, Output
from pydantic import ValidationError

from flujo_dagster import names
from flujo_dagster.adapter.ops.injection import OpInjector, step_resource_keys
from flujo_dagster.adapter.ops.leaf import (
    OpReporter,
    StepWiring,
    failed_with_costs,
    ins_for,
    not_retried,
    outs_for,
    priced_agents,
)
from flujo_dagster.adapter.ops.park import ParkWatch
from flujo_dagster.adapter.storage.call_files import store_calls
from flujo_dagster.adapter.storage.checkpoints import OpCheckpoints
from flujo_dagster.adapter.storage.io_manager import (
    Bundle,
    Origin,
    PydanticJsonIOManager,
    StoredKey,
    bundled_value,
    read_bundle,
)
from flujo_dagster.adapter.storage.types import key_type
from flujo_dagster.dsl.control import Branch, Loop
from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, Step
from flujo_dagster.errors import StepOutputError, StorageError
from flujo_dagster.names import (
    AFTER_INPUT,
    AGENT_RUNTIME_KEY,
    BUDGET_LEDGER_KEY,
    BUNDLE_OUTPUT,
    CALL_CACHE_KEY,
    CONTEXT_KEY,
    CONTEXT_OP,
    CONTEXT_OUTPUT,
    CONTINUE_OUTPUT,
    DECISION_OUTPUT,
    DONE_OUTPUT,
    EXIT_OUTPUT,
    IO_MANAGER_KEY,
    PRICE_BOOK_KEY,
    io_name,
)
from flujo_dagster.runtime.control import branch_arm, loop_should_exit
from flujo_dagster.runtime.interpreter import Interpreter
from flujo_dagster.runtime.records import StepRecord
from flujo_dagster.runtime.retries import NEVER_RETRIED
from flujo_dagster.runtime.values import jsonable, to_json_bytes

__all__ = [
    "Producer",
    "arm_output",
    "barrier_op",
    "branch_join_op",
    "context_op",
    "inline_metadata",
    "inline_op",
    "loop_join_op",
    "router_op",
    "until_op",
]

Producer = tuple[str, str]  # (node name, output name)


def _outs_or_done(
    pipeline: Pipeline, wiring: StepWiring, optional: frozenset[str], *, done: bool = False, holds: bool = False
) -> dict[str, Out]:
    """The outputs of the keys written; `flujo_done` too when the op writes no key or `done` (a join after a
    construct holding an approval gate: the steps after it wait for this output). Every output is optional when
    the op `holds` while a gate before it is parked (see `ops/park.py`)."""
    outs = outs_for(pipeline, wiring.writes, frozenset(wiring.writes) if holds else optional)
    if done or not wiring.writes:
        outs[DONE_OUTPUT] = Out(Nothing, is_required=not holds)
    return outs


def arm_output(index: int) -> str:
    """The router output that gates arm `index` of a branch."""
    return f"arm_{index}"


class _Reader:
    """Reads producers' stored values for one op invocation, resolving each producer's run on re-execution."""

    def __init__(self, context: OpExecutionContext, step_key: Callable[[str], str]) -> None:
        self.context = context
        self.io: PydanticJsonIOManager = getattr(context.resources, IO_MANAGER_KEY)
        self.root = self.io.root(context.instance.storage_directory())
        self.step_key = step_key
        self._runs: dict[str, DagsterRun] = {}
        self._bundles: dict[str, dict[str, object]] = {}

    def _run_of(self, step_key: str) -> str:
        """The run (this one or an ancestor) whose storage holds `step_key`'s outputs."""
        run = self.context.run
        while True:
            keys = run.step_keys_to_execute
            if keys is None or step_key in keys or run.parent_run_id is None:
                return run.run_id
            parent = self._runs.get(run.parent_run_id) or self.context.instance.get_run_by_id(run.parent_run_id)
            if parent is None:
                return run.run_id
            self._runs[run.parent_run_id] = parent
            run = parent

    def locate(self, producer: Producer) -> tuple[str, Any]:
        step_key = self.step_key(producer[0])
        run_id = self._run_of(step_key)
        return run_id, self.io.output_path(self.root, run_id, step_key, producer[1])

    def exists(self, producer: Producer) -> bool:
        return bool(self.locate(producer)[1].exists())

    def read(self, producer: Producer, stored: StoredKey) -> object:
        """Key `stored` from its producer's output: its own file, or the producer's bundle (read once)."""
        run_id, path = self.locate(producer)
        where = Origin(run_id, self.step_key(producer[0]))
        if producer[1] != BUNDLE_OUTPUT:
            return self.io.read(path, stored, where=where, root=self.root)
        keys = self._bundles.get(str(path))
        if keys is None:
            keys = self._bundles[str(path)] = read_bundle(path, where=where, root=self.root)
        return bundled_value(keys, stored, path, where)


def _forward(pipeline: Pipeline, reader: _Reader, producers: Mapping[str, Producer | None]) -> Iterator[Output[Any]]:
    """Yield each key's value from its producer, when that producer wrote it."""
    for key, producer in producers.items():
        if producer is not None and reader.exists(producer):
            yield Output(reader.read(producer, StoredKey(key, pipeline.fields[key])), io_name(key))


def context_op(
    pipeline: Pipeline,
    name: str,
    producers: Mapping[str, Producer],
    *,
    step_key: Callable[[str], str],
    watch: ParkWatch | None = None,
) -> OpDefinition:
    """The last op: reads every key's live value and returns the validated context. It depends on every
    producer through one fan-in `Nothing` input that includes `flujo_inputs`, so it runs even when producers
    were skipped, and then fails naming any key that was never produced; with a `watch` (the pipeline has
    approval gates), it holds while a gate is parked in the run. A run of a subset of the pipeline's assets
    yields no final context."""
    context_type = key_type(pipeline.name, CONTEXT_KEY, pipeline.context)

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        if watch is not None and watch.holds(context, CONTEXT_OP, pipeline.name):
            return
        if context.is_subset:  # a run of some of the assets has no final context: nothing to assemble
            context.log.info(f"a subset of the assets of pipeline {pipeline.name!r}: no final context")
            return
        reader = _Reader(context, step_key)
        values: dict[str, object] = {}
        for key, producer in producers.items():
            run_id, path = reader.locate(producer)
            if not path.exists():
                raise StorageError(
                    f"key {key!r} of pipeline {pipeline.name!r} was never produced: step {producer[0]!r} did not "
                    f"write it in run {run_id} (expected {path}). Check the event log of step {producer[0]!r}."
                )
            values[key] = reader.read(producer, StoredKey(key, pipeline.fields[key]))
        # through the JSON form: python-mode validation is not idempotent for every type (Base64Bytes)
        dumped = {k: jsonable(key_type(pipeline.name, k, pipeline.fields[k]).adapter, v) for k, v in values.items()}
        try:
            final = pipeline.context.model_validate_json(to_json_bytes(dumped), by_name=True)
        except ValidationError as exc:
            raise StepOutputError(
                f"the final context of pipeline {pipeline.name!r} does not validate as "
                f"{pipeline.context.__name__}: {exc}"
            ) from exc
        yield Output(final, CONTEXT_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={AFTER_INPUT: In(Nothing)},
        outs={CONTEXT_OUTPUT: Out(context_type, io_manager_key=IO_MANAGER_KEY, is_required=False)},
        required_resource_keys={IO_MANAGER_KEY},
        description=f"Assembles and validates the final {pipeline.context.__name__} of pipeline {pipeline.name!r}.",
        tags=names.op_tags(names.OpKind.CONTEXT),
    )


def router_op(pipeline: Pipeline, branch: Branch, wiring: StepWiring) -> OpDefinition:
    """A branch's router: evaluates the selector, yields the taken arm's output (the others are skipped) and
    the decision (the arm's label)."""
    labels = [label for label, _ in branch.arms()]

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        state = {k: inputs[io_name(k)] for k in wiring.reads}
        try:
            label, _ = branch_arm(branch, state, wiring.path)
        except NEVER_RETRIED as exc:
            raise not_retried(exc, wiring) from exc
        yield Output(label, DECISION_OUTPUT)
        yield Output(None, arm_output(labels.index(label)))

    outs: dict[str, Out] = {DECISION_OUTPUT: Out(str, io_manager_key=IO_MANAGER_KEY)}
    outs.update({arm_output(i): Out(Nothing, is_required=False) for i in range(len(labels))})
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins={**ins_for(pipeline, wiring.reads, gated=wiring.gated), AFTER_INPUT: In(Nothing)},
        outs=outs,
        description=f"branch {wiring.path}: routes to one of {', '.join(labels)}",
        tags=names.op_tags(names.OpKind.ROUTER, wiring.path),
    )


def branch_join_op(
    pipeline: Pipeline,
    wiring: StepWiring,
    labels: Sequence[str],
    arms: Sequence[Mapping[str, Producer | None]],
    *,
    step_key: Callable[[str], str],
    done: bool = False,
    watch: ParkWatch | None = None,
) -> OpDefinition:
    """After a branch: forwards each key the arms write from the producer on the taken arm (holds while a gate
    before it is parked, with a `watch`)."""

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        if watch is not None and watch.holds(context, wiring.op, wiring.path):
            return
        taken = arms[labels.index(inputs[DECISION_OUTPUT])]
        yield from _forward(pipeline, _Reader(context, step_key), taken)
        if done or not wiring.writes:
            yield Output(None, DONE_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins={DECISION_OUTPUT: In(str), AFTER_INPUT: In(Nothing)},
        outs=_outs_or_done(pipeline, wiring, frozenset(wiring.writes), done=done, holds=watch is not None),
        required_resource_keys={IO_MANAGER_KEY},
        description=f"joins branch {wiring.path}: forwards {', '.join(wiring.writes) or 'no key'}",
        tags=names.op_tags(names.OpKind.JOIN, wiring.path),
    )


def until_op(pipeline: Pipeline, loop: Loop, wiring: StepWiring, iteration: int, *, loop_path: str) -> OpDefinition:
    """A loop's gate after iteration `iteration`: yields `exit` (the iteration number) or `next`. Its errors
    name the loop (`loop_path`), as the interpreter's do."""
    last = iteration >= loop.max_iterations

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        state = {k: inputs[io_name(k)] for k in wiring.reads}
        try:
            done = loop_should_exit(loop, state, iteration, loop_path)
        except NEVER_RETRIED as exc:
            raise not_retried(exc, wiring) from exc
        yield Output(iteration, EXIT_OUTPUT) if done else Output(None, CONTINUE_OUTPUT)

    outs: dict[str, Out] = {EXIT_OUTPUT: Out(int, io_manager_key=IO_MANAGER_KEY, is_required=False)}
    if not last:
        outs[CONTINUE_OUTPUT] = Out(Nothing, is_required=False)
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins={**ins_for(pipeline, wiring.reads, gated=wiring.gated), AFTER_INPUT: In(Nothing)},
        outs=outs,
        description=f"loop {wiring.path}: exit after iteration {iteration}, or go on",
        tags=names.op_tags(names.OpKind.LOOP_GATE, wiring.path),
    )


def barrier_op(pipeline: Pipeline, wiring: StepWiring, watch: ParkWatch) -> OpDefinition:
    """After a Parallel whose branches hold approval gates: waits (fan-in `after`) for every branch's gate in
    force, so that the steps after the Parallel wait for all of them, and holds while one of them is parked.
    Gated like a loop's join."""

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        if not watch.holds(context, wiring.op, wiring.path):
            yield Output(None, DONE_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins={**ins_for(pipeline, (), gated=wiring.gated), AFTER_INPUT: In(Nothing)},
        outs={DONE_OUTPUT: Out(Nothing, is_required=False)},
        description=f"joins parallel {wiring.path}: waits for the approval gates in its branches",
        tags=names.op_tags(names.OpKind.JOIN, wiring.path),
    )


def loop_join_op(
    pipeline: Pipeline,
    wiring: StepWiring,
    exits: Sequence[Producer],
    iterations: Sequence[Mapping[str, Producer | None]],
    *,
    step_key: Callable[[str], str],
    done: bool = False,
    watch: ParkWatch | None = None,
) -> OpDefinition:
    """After a loop: forwards the keys the body writes from the iteration that exited. Gated (`wiring.gated`)
    by the gate in force before the loop, so that it is skipped with the region holding the loop even when its
    `after` fan-in includes producers from outside it; holds while a gate before it is parked (`watch`)."""

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        if watch is not None and watch.holds(context, wiring.op, wiring.path):
            return
        reader = _Reader(context, step_key)
        exited = next(i for i, gate in enumerate(exits) if reader.exists(gate))
        yield from _forward(pipeline, reader, iterations[exited])
        if done or not wiring.writes:
            yield Output(None, DONE_OUTPUT)

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins={**ins_for(pipeline, (), gated=wiring.gated), AFTER_INPUT: In(Nothing)},
        outs=_outs_or_done(pipeline, wiring, frozenset(wiring.writes), done=done, holds=watch is not None),
        required_resource_keys={IO_MANAGER_KEY},
        description=f"joins loop {wiring.path}: forwards {', '.join(wiring.writes) or 'no key'}",
        tags=names.op_tags(names.OpKind.JOIN, wiring.path),
    )


def _table(records: Sequence[StepRecord]) -> str:
    lines = [
        "| step | status | attempts | s | model | tokens in/out | requests | cost USD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cost = "" if r.cost_usd is None else f"{r.cost_usd:.6f}"
        lines.append(
            f"| {r.path} | {r.status} | {r.attempts} | {r.duration_s:.3f} | {r.model or ''} | "
            f"{r.input_tokens}/{r.output_tokens} | {r.requests} | {cost} |"
        )
    return "\n".join(lines)


def _record_json(record: StepRecord) -> dict[str, object]:
    row: dict[str, object] = dict(record.__dict__)
    row["cost_usd"] = None if record.cost_usd is None else float(record.cost_usd)
    row["saved_cost_usd"] = float(record.saved_cost_usd)
    return row


def inline_metadata(wiring: StepWiring, records: Sequence[StepRecord]) -> dict[str, Any]:
    """An inline op's metadata: its per-step table (failed steps' charged calls included) and totals."""
    metadata: dict[str, Any] = {
        names.STEP_PATH: wiring.path,
        names.STEPS: MetadataValue.md(_table(records)),
        names.STEPS_JSON: MetadataValue.json([_record_json(r) for r in records]),
        names.INPUT_TOKENS: sum(r.input_tokens for r in records),
        names.OUTPUT_TOKENS: sum(r.output_tokens for r in records),
        names.REQUESTS: sum(r.requests for r in records),
        names.COST_USD: float(sum(r.cost_usd or 0 for r in records)),
    }
    if any(r.usage_unknown for r in records):
        metadata[names.USAGE_UNKNOWN] = True
    if any(r.cache_hits for r in records):
        metadata[names.CACHE_HITS] = sum(r.cache_hits for r in records)
        metadata[names.SAVED_COST_USD] = float(sum(r.saved_cost_usd for r in records))
    return metadata


def _inline_outs(pipeline: Pipeline, wiring: StepWiring, fused: tuple[str, ...]) -> dict[str, Out]:
    """An inline op's outputs: the bundle of its `fused` keys, one per other key written, or `flujo_done`."""
    outs = outs_for(pipeline, tuple(k for k in wiring.writes if k not in fused), wiring.optional)
    if fused:
        outs[BUNDLE_OUTPUT] = Out(io_manager_key=IO_MANAGER_KEY)
    if not wiring.writes:
        outs[DONE_OUTPUT] = Out(Nothing)
    return outs


def inline_op(
    pipeline: Pipeline, node: Step, wiring: StepWiring, parent_path: str, *, fused: tuple[str, ...] = ()
) -> OpDefinition:
    """A subtree run in one op by the interpreter. The keys in `fused` travel as one output (`BUNDLE_OUTPUT`,
    two Dagster events whatever their number), each stored as its own file; the others (assets, keys written
    on some paths only) keep an output each. The first output's metadata carries a per-step table; each
    ignored failure of a parallel branch is logged once."""
    inner = [s for _, s in walk([node], parent_path)]
    agent_steps = [s for s in inner if isinstance(s, AgentStep)]
    needs_agents = bool(agent_steps)
    pools = {s.pool_name() for s in agent_steps}
    resources = {IO_MANAGER_KEY, *step_resource_keys(inner)}
    if needs_agents:
        resources |= {AGENT_RUNTIME_KEY, PRICE_BOOK_KEY, BUDGET_LEDGER_KEY, CALL_CACHE_KEY}

    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Any:
        state: dict[str, object] = {k: inputs[io_name(k)] for k in wiring.reads}
        records = OpReporter(context.log)
        agents = None
        if needs_agents:
            limits = {p.name: p.limit for p in context.instance.event_log_storage.get_pool_limits() if p.name in pools}
            agents = priced_agents(context, pipeline, limits, agent_steps)
        checkpoints = OpCheckpoints(context, pipeline.fields)  # a re-execution reuses finished branches and items
        interpreter = Interpreter(
            fields=pipeline.fields,
            agents=agents,
            reporter=records,
            checkpoints=checkpoints,
            injector=OpInjector(context),
        )
        calls = agents.calls if agents is not None else None
        try:
            await interpreter.run([node], state, parent_path)
        except NEVER_RETRIED as exc:
            linked = store_calls(context, calls, wiring.path)
            raise not_retried(exc, wiring, {**inline_metadata(wiring, records.records), **linked}) from exc
        except Exception as exc:  # the failure event carries what the inner agent calls were charged
            linked = store_calls(context, calls, wiring.path)
            charged = any(r.model is not None for r in records.records)
            metadata = {**inline_metadata(wiring, records.records), **linked} if charged else {}
            raised = failed_with_costs(exc, wiring, metadata)
            if raised is exc:
                raise
            raise raised from exc
        for record in records.records:
            if record.status == "ignored":
                context.log.warning(f"{record.path} failed and was ignored: {record.error}")
        metadata = {**inline_metadata(wiring, records.records), **store_calls(context, calls, wiring.path)}
        first = True
        if fused:
            missing = [k for k in fused if k not in state]
            if missing:
                raise StepOutputError(f"{wiring.path}: keys {missing} were not written, though every path writes them")
            bundle = Bundle(values={k: state[k] for k in fused}, annotations={k: pipeline.fields[k] for k in fused})
            yield Output(bundle, BUNDLE_OUTPUT, metadata=metadata)
            first = False
        for key in wiring.writes:
            if key in state and key not in fused:
                yield Output(state[key], io_name(key), metadata=metadata if first else None)
                first = False
        if not wiring.writes:
            yield Output(None, DONE_OUTPUT, metadata=metadata)

    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=ins_for(pipeline, wiring.reads, gated=wiring.gated),
        outs=_inline_outs(pipeline, wiring, fused),
        required_resource_keys=resources,
        description=f"{node.kind} {wiring.path}, run in one op by the flujo interpreter",
        retry_policy=None,
        tags=names.op_tags(names.OpKind.inline(node.kind), wiring.path),
    )
