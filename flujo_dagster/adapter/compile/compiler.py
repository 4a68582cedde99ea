"""The one compiler: a validated pipeline becomes a graph of ops, then a job or graph-backed assets + job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    ExecutorDefinition,
    GraphDefinition,
    JobDefinition,
    OpDefinition,
    OutputMapping,
    define_asset_job,
)

from flujo_dagster.adapter.compile.graph.build import build_graph
from flujo_dagster.adapter.compile.graph.built import BuiltGraph
from flujo_dagster.adapter.compile.lineage import data_upstream
from flujo_dagster.adapter.compile.partitions import partitions_def
from flujo_dagster.adapter.compile.reviews import ReviewPlan, plan_reviews
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.compile.versions import asset_versions, op_versions, versioned_specs, with_code_versions
from flujo_dagster.adapter.ops.subset import selected_outputs_only
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.names import (
    CONTEXT_KEY,
    CONTEXT_OP,
    CONTEXT_OUTPUT,
    INPUTS_OP,
    graph_name,
    io_name,
    step_key,
    step_key_parts,
    upstream_op,
)
from flujo_dagster.runtime.code_versions import ModelIdOf

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

    def inputs_run_config(self, inputs: Mapping[str, object]) -> dict[str, object]:
        """The run config that hands `inputs` (JSON values) to the pipeline's `flujo_inputs` op."""
        config: dict[str, object] = {"config": {"inputs": dict(inputs)}}
        for node in reversed(step_key_parts(self.pipeline.name, self.assets is not None, INPUTS_OP)):
            config = {"ops": {node: config}}
        return config


def _asset_lineage(
    upstream: dict[str, list[Producer]], produced_by: dict[str, Producer], asset_of: dict[Producer, AssetKey]
) -> dict[str, set[AssetKey]]:
    """For each asset output, the assets it derives from: walk the data flow upstream from its producer and stop
    at the nearest asset outputs, or upstream ops (an upstream key's op stands for its asset). Dagster does not
    infer lineage inside a graph asset."""
    lineage: dict[str, set[AssetKey]] = {}
    for out, (op, output) in produced_by.items():
        found: set[AssetKey] = set()
        seen: set[str] = set()
        frontier = list(upstream.get(op, ()))
        while frontier:
            source = frontier.pop()
            if source in asset_of and asset_of[source] != asset_of[(op, output)]:
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
    model_id: ModelIdOf | None = None,
) -> CompiledPipeline:
    """Compile a pipeline that passed validation. Deterministic: every step process rebuilds the same job.
    `model_id` gives the model each agent step runs on in this code location (`AgentRuntime.model_id_for`;
    default: its own), part of its code version."""
    has_assets = bool(pipeline.assets)
    built = build_graph(pipeline, lambda node: step_key(pipeline.name, has_assets, node))
    upstream = data_upstream(built)  # from the ops as built, before the review replaces asset producers
    job_name = translator.get_job_name(pipeline)
    specs = _asset_specs(pipeline, translator) if has_assets else {}
    # asset producers wrapped for review metadata and checks (replaced in built.defs)
    keys = {k: spec.key for k, spec in specs.items()}
    if has_assets:
        _subsettable(built)  # before the review wraps the asset producers: their checks see only selected outputs
    review = plan_reviews(pipeline, built, keys) if has_assets else ReviewPlan()
    versions = op_versions(built, model_id)  # code versions: docs/assets.md, "Staleness and code versions"
    with_code_versions(built, versions)
    specs = versioned_specs(specs, asset_versions(pipeline, built, upstream, versions)) if has_assets else specs
    graph = _graph(pipeline, built, review)
    if not pipeline.assets:
        job = graph.to_job(
            name=job_name,
            executor_def=executor,
            description=pipeline.description,
            partitions_def=partitions_def(pipeline),
        )
        return CompiledPipeline(
            pipeline=pipeline,
            graph=graph,
            job=job,
            assets=None,
            job_name=job_name,
            context_step_key=CONTEXT_OP,
            inputs_step_key=INPUTS_OP,
        )
    assets = _assets(pipeline, graph, built, upstream, review, specs)
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


def _graph(pipeline: Pipeline, built: BuiltGraph, review: ReviewPlan) -> GraphDefinition:
    """The pipeline's graph: its ops, their dependencies, and an output per asset (the final context too)."""
    return GraphDefinition(
        # not the job's name: Dagster wants graph and job names distinct within a code location
        name=graph_name(pipeline.name, bool(pipeline.assets)),
        description=pipeline.description,
        node_defs=list(dict.fromkeys(built.defs.values())),
        dependencies=built.dependencies(),
        input_mappings=built.input_mappings,
        output_mappings=[
            *(OutputMapping(io_name(k), *built.live[k]) for k in pipeline.assets),
            # Dagster refuses non-asset leaf ops in a graph-backed asset: the final context is an asset, or the
            # op after it reports a check (`reviews._context_check`).
            *([OutputMapping(CONTEXT_OUTPUT, CONTEXT_OP, CONTEXT_OUTPUT)] if _context_asset(pipeline) else []),
            *review.output_mappings,
        ],
    )


def _subsettable(built: BuiltGraph) -> None:
    """Every op of a graph-backed asset yields only its selected outputs in a subset run (shared definitions
    stay shared)."""
    wrapped: dict[int, OpDefinition | GraphDefinition] = {}
    for node, definition in built.defs.items():
        if isinstance(definition, OpDefinition):
            definition = wrapped.setdefault(id(definition), selected_outputs_only(definition))
        built.defs[node] = definition


def _context_asset(pipeline: Pipeline) -> bool:
    """Whether the final context is an asset: asked for (`context_asset=True`) by a pipeline with assets."""
    return bool(pipeline.assets) and pipeline.context_asset


def _asset_specs(pipeline: Pipeline, translator: FlujoDagsterTranslator) -> dict[str, AssetSpec]:
    """The translator's spec of each asset of `pipeline`, by key name (`CONTEXT_KEY`: the final context, when it
    is an asset)."""
    specs = {k: translator.get_asset_spec(pipeline, k) for k in pipeline.assets}
    if _context_asset(pipeline):
        specs[CONTEXT_KEY] = translator.get_asset_spec(pipeline, None)
    return specs


def _assets(
    pipeline: Pipeline,
    graph: GraphDefinition,
    built: BuiltGraph,
    upstream: dict[str, list[Producer]],
    review: ReviewPlan,
    specs: Mapping[str, AssetSpec],
) -> AssetsDefinition:
    """The graph-backed assets: one per asset key (and the final context, when asked for), with the translator's
    specs (key, group, description, metadata, tags and kinds, owners, code version, automation condition), the
    lineage between them (and from the upstream assets and deps they derive from, whose keys the graph's inputs
    are mapped to) and the review's checks."""
    live, input_assets = built.live, built.input_assets
    by_output = {(CONTEXT_OUTPUT if k == CONTEXT_KEY else io_name(k)): spec for k, spec in specs.items()}
    keys: dict[str, AssetKey] = {o: spec.key for o, spec in by_output.items()}
    produced_by = {io_name(k): live[k] for k in pipeline.assets}
    if CONTEXT_KEY in specs:
        produced_by[CONTEXT_OUTPUT] = (CONTEXT_OP, CONTEXT_OUTPUT)
    inputs = {name: AssetKey(list(path)) for name, path in input_assets.items()}
    asset_of = {p: keys[o] for o, p in produced_by.items()}
    asset_of |= {(upstream_op(k), io_name(k)): inputs[upstream_op(k)] for k in pipeline.upstream}
    lineage = _asset_lineage(upstream, produced_by, asset_of)
    deps = {AssetKey(list(path)) for path in pipeline.deps}  # non-data: every asset of the pipeline waits for them
    return AssetsDefinition.from_graph(
        graph,
        keys_by_input_name=inputs,
        keys_by_output_name=keys,
        internal_asset_deps={o: parents | deps for o, parents in lineage.items()},
        group_names_by_output_name={o: s.group_name for o, s in by_output.items()},
        descriptions_by_output_name={o: s.description for o, s in by_output.items() if s.description is not None},
        metadata_by_output_name={o: dict(s.metadata) for o, s in by_output.items()},
        tags_by_output_name={o: dict(s.tags) for o, s in by_output.items()},  # kinds are `dagster/kind/` tags
        owners_by_output_name={o: list(s.owners) for o, s in by_output.items()},
        code_versions_by_output_name={o: s.code_version for o, s in by_output.items()},
        automation_conditions_by_output_name={o: s.automation_condition for o, s in by_output.items()},
        check_specs=review.check_specs,
        partitions_def=partitions_def(pipeline),
        can_subset=True,
    )
