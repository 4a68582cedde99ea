"""The one compiler: a validated pipeline becomes a graph of ops, then a job or graph-backed assets + job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DependencyDefinition,
    ExecutorDefinition,
    GraphDefinition,
    JobDefinition,
    MultiDependencyDefinition,
    NodeInvocation,
    OutputMapping,
    define_asset_job,
)

from flujo_dagster.adapter.naming import (
    CONTEXT_OP,
    CONTEXT_OUTPUT,
    INPUTS_OP,
    READY_OUTPUT,
    graph_name,
    io_name,
    op_name,
    step_key,
)
from flujo_dagster.adapter.ops import StepWiring, context_op, inputs_op, step_op
from flujo_dagster.adapter.translator import FlujoDagsterTranslator
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.validation import step_path

if TYPE_CHECKING:  # not exported by dagster; only needed for the annotation
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["CompiledPipeline", "compile_pipeline"]

Producer = tuple[str, str]  # (op name, output name)


@dataclass(frozen=True, kw_only=True)
class CompiledPipeline:
    """What one pipeline compiles to."""

    pipeline: Pipeline
    graph: GraphDefinition
    job: JobDefinition | UnresolvedAssetJobDefinition
    assets: AssetsDefinition | None
    job_name: str
    context_step_key: str
    """Step key of the `flujo_context` op, whose output `context` is the run's final typed context."""
    inputs_step_key: str
    """Step key of the `flujo_inputs` op, whose config takes the run's inputs."""


def _emitted_initial_keys(pipeline: Pipeline) -> tuple[str, ...]:
    """Initial keys some step reads before any step writes them, or that no step writes at all."""
    needed: set[str] = set()
    written: set[str] = set()
    for s in pipeline.steps:
        keys = pipeline.keys_of(s)
        needed.update(k for k in keys.reads if k not in written)
        written.update(keys.writes or ())
    return tuple(k for k in pipeline.initial_keys() if k in needed or k not in written)


def _asset_lineage(
    upstream: dict[str, list[Producer]], produced_by: dict[str, Producer], asset_of: dict[Producer, str]
) -> dict[str, set[str]]:
    """For each asset output, the asset outputs it derives from: walk the data flow upstream from its
    producer and stop at the nearest asset outputs. Dagster does not infer lineage inside a graph asset."""
    lineage: dict[str, set[str]] = {}
    for out, (op, _) in produced_by.items():
        found: set[str] = set()
        seen: set[str] = set()
        frontier = list(upstream.get(op, ()))
        while frontier:
            source = frontier.pop()
            if source in asset_of and asset_of[source] != out:
                found.add(asset_of[source])
            elif source[0] not in seen:
                seen.add(source[0])
                frontier.extend(upstream.get(source[0], ()))
        lineage[out] = found
    return lineage


def compile_pipeline(
    pipeline: Pipeline,
    *,
    translator: FlujoDagsterTranslator,
    executor: ExecutorDefinition | None = None,
) -> CompiledPipeline:
    """Compile a pipeline that passed validation. Deterministic: every step process rebuilds the same job."""
    emitted = _emitted_initial_keys(pipeline)
    live: dict[str, Producer] = {k: (INPUTS_OP, io_name(k)) for k in emitted}
    node_defs = [inputs_op(pipeline, op_name(pipeline.name, INPUTS_OP), emitted)]
    deps: dict[str, dict[str, DependencyDefinition | MultiDependencyDefinition]] = {INPUTS_OP: {}}
    upstream: dict[str, list[Producer]] = {}
    for s in pipeline.steps:
        keys = pipeline.keys_of(s)
        if keys.writes is None:
            raise ConfigurationError(f"{step_path(pipeline, s)}: writes no known key; validate the pipeline first")
        wiring = StepWiring(
            op=op_name(s.name),
            definition=op_name(pipeline.name, s.name),
            path=step_path(pipeline, s),
            reads=keys.reads,
            writes=keys.writes,
            split=keys.split,
        )
        node_defs.append(step_op(pipeline, s, wiring))
        deps[wiring.op] = {io_name(k): DependencyDefinition(*live[k]) for k in keys.reads}
        upstream[wiring.op] = [live[k] for k in keys.reads]
        live.update({k: (wiring.op, io_name(k)) for k in keys.writes})
    has_assets = bool(pipeline.assets)
    node_defs.append(
        context_op(
            pipeline,
            op_name(pipeline.name, CONTEXT_OP),
            live,
            step_key=lambda n: step_key(pipeline.name, has_assets, n),
        )
    )
    # flujo_inputs always feeds the fan-in: it always runs, so flujo_context always runs too (and then names any
    # key that was never produced); with no key to emit it emits a Nothing output for this.
    inputs_source = (INPUTS_OP, io_name(emitted[0]) if emitted else READY_OUTPUT)
    sources = list(dict.fromkeys([inputs_source, *live.values()]))
    deps[CONTEXT_OP] = {"after": MultiDependencyDefinition([DependencyDefinition(*p) for p in sources])}
    upstream[CONTEXT_OP] = sources

    job_name = translator.get_job_name(pipeline)
    graph = GraphDefinition(
        # not the job's name: Dagster wants graph and job names distinct within a code location
        name=graph_name(pipeline.name, has_assets),
        description=pipeline.description,
        node_defs=node_defs,
        dependencies={NodeInvocation(d.name, alias=node): deps[node] for d, node in zip(node_defs, deps, strict=True)},
        output_mappings=[
            *(OutputMapping(io_name(k), *live[k]) for k in pipeline.assets),
            # Dagster refuses non-asset leaf ops in a graph-backed asset: the final context is an asset too.
            *([OutputMapping(CONTEXT_OUTPUT, CONTEXT_OP, CONTEXT_OUTPUT)] if pipeline.assets else []),
        ],
    )
    if not pipeline.assets:
        job = graph.to_job(name=job_name, executor_def=executor, description=pipeline.description)
        return CompiledPipeline(
            pipeline=pipeline,
            graph=graph,
            job=job,
            assets=None,
            job_name=job_name,
            context_step_key=CONTEXT_OP,
            inputs_step_key=INPUTS_OP,
        )
    outs = {io_name(k): k for k in pipeline.assets}
    asset_keys = {o: translator.get_asset_key(pipeline, k) for o, k in outs.items()}
    asset_keys[CONTEXT_OUTPUT] = translator.get_context_asset_key(pipeline)
    groups = {o: translator.get_group_name(pipeline, k) for o, k in outs.items()}
    groups[CONTEXT_OUTPUT] = translator.get_group_name(pipeline, None)
    descriptions = {o: translator.get_description(pipeline, k) for o, k in outs.items()}
    descriptions[CONTEXT_OUTPUT] = translator.get_description(pipeline, None)
    metadata = {o: dict(translator.get_metadata(pipeline, k)) for o, k in outs.items()}
    metadata[CONTEXT_OUTPUT] = dict(translator.get_metadata(pipeline, None))
    tags = {o: dict(translator.get_tags(pipeline, k)) for o, k in outs.items()}
    tags[CONTEXT_OUTPUT] = dict(translator.get_tags(pipeline, None))
    produced_by = {io_name(k): live[k] for k in pipeline.assets}
    produced_by[CONTEXT_OUTPUT] = (CONTEXT_OP, CONTEXT_OUTPUT)
    lineage = _asset_lineage(upstream, produced_by, {p: o for o, p in produced_by.items()})
    assets = AssetsDefinition.from_graph(
        graph,
        keys_by_output_name=asset_keys,
        internal_asset_deps={o: {asset_keys[d] for d in parents} for o, parents in lineage.items()},
        group_names_by_output_name=groups,
        descriptions_by_output_name={o: d for o, d in descriptions.items() if d is not None},
        metadata_by_output_name=metadata,
        tags_by_output_name=tags,
    )
    asset_job = define_asset_job(
        job_name,
        selection=AssetSelection.assets(assets),
        executor_def=executor,
        description=pipeline.description,
    )
    return CompiledPipeline(
        pipeline=pipeline,
        graph=graph,
        job=asset_job,
        assets=assets,
        job_name=job_name,
        context_step_key=step_key(pipeline.name, has_assets, CONTEXT_OP),
        inputs_step_key=step_key(pipeline.name, has_assets, INPUTS_OP),
    )
