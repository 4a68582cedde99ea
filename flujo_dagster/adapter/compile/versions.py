"""Code versions on the compiled graph: each op's (from the DSL node it was expanded from) and each asset's (from
the ops that make its value, back to the nearest other asset), so that Dagster marks an asset stale when a step
that makes it changes (docs/assets.md, "Staleness and code versions")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dagster import AssetSpec, In, OpDefinition, Out

from flujo_dagster.adapter.compile.graph.built import BuiltGraph
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.names import CONTEXT_KEY, CONTEXT_OP, CONTEXT_OUTPUT, io_name, upstream_op
from flujo_dagster.runtime.code_versions import ModelIdOf, combine, node_version

__all__ = ["asset_versions", "op_versions", "versioned_specs", "with_code_versions"]

Producer = tuple[str, str]


def op_versions(built: BuiltGraph, model_id: ModelIdOf | None) -> dict[str, str]:
    """The code version of each node: its DSL node's (`node_version`: a leaf step's version, a control-flow
    node's own part for its routers, gates and joins, its whole subtree for an inline op); flujo's own ops
    (inputs, context, upstream, checks) by their role, which no user code changes."""
    versions: dict[str, str] = {}
    known: dict[tuple[int, bool], str] = {}  # a loop's iterations share their steps: each versioned once
    for node in built.defs:
        owner = built.owners.get(node)
        if owner is None:
            versions[node] = combine("flujo", node)
            continue
        step, whole = owner
        if (id(step), whole) not in known:
            known[(id(step), whole)] = node_version(step, model_id, whole=whole)
        versions[node] = known[(id(step), whole)]
    return versions


def with_code_versions(built: BuiltGraph, versions: Mapping[str, str]) -> None:
    """Give each op definition of `built` its code version (shown on the op in the UI; not used to run it). A
    definition that several nodes share stays one definition, with a version of all of theirs."""
    sharing: dict[int, list[str]] = {}
    for node, definition in built.defs.items():
        sharing.setdefault(id(definition), []).append(node)
    for nodes in sharing.values():
        definition = built.defs[nodes[0]]
        if not isinstance(definition, OpDefinition):
            continue
        found = sorted({versions[n] for n in nodes})
        versioned = OpDefinition(
            compute_fn=definition.compute_fn,
            name=definition.name,
            ins={i.name: In.from_definition(i) for i in definition.input_defs},
            outs={o.name: Out.from_definition(o) for o in definition.output_defs},
            description=definition.description,
            config_schema=definition.config_schema,
            required_resource_keys=definition.required_resource_keys,
            tags=definition.tags,
            retry_policy=definition.retry_policy,
            code_version=found[0] if len(found) == 1 else combine("shared", found),
            pool=definition.pool,
        )
        built.defs.update(dict.fromkeys(nodes, versioned))


def asset_versions(
    pipeline: Pipeline, built: BuiltGraph, upstream: Mapping[str, Sequence[Producer]], versions: Mapping[str, str]
) -> dict[str, str]:
    """The code version of each asset of `pipeline` by key name (`CONTEXT_KEY`: the final context, when it is an
    asset): the versions of the ops its value flows through, from its producer back to the nearest other asset
    or upstream op (the walk of the compiler's lineage), and the versions of the pipeline's assets it derives
    from. Dagster 1.13 does not mark an asset stale when a parent is stale by code (only once the parent has a
    new materialization), so a changed step makes every asset of its pipeline downstream of it stale at once."""
    produced = {k: built.live[k] for k in pipeline.assets}
    if pipeline.context_asset:
        produced[CONTEXT_KEY] = (CONTEXT_OP, CONTEXT_OUTPUT)
    asset_at = {p: k for k, p in produced.items()}
    stops = set(produced.values()) | {(upstream_op(k), io_name(k)) for k in pipeline.upstream}
    ops: dict[str, set[str]] = {}
    parents: dict[str, set[str]] = {}
    for key, (op, output) in produced.items():
        seen, found = {op}, set[str]()
        frontier = list(upstream.get(op, ()))
        while frontier:
            source = frontier.pop()
            if source in stops and source != (op, output):
                found.update([asset_at[source]] if source in asset_at else [])
            elif source[0] not in seen:
                seen.add(source[0])
                frontier.extend(upstream.get(source[0], ()))
        ops[key], parents[key] = seen, found
    done: dict[str, str] = {}

    def version(key: str) -> str:
        if key not in done:
            own = sorted([node, versions[node]] for node in ops[key])
            done[key] = combine("asset", own, sorted(version(p) for p in parents[key]))
        return done[key]

    return {key: version(key) for key in produced}


def versioned_specs(specs: Mapping[str, AssetSpec], versions: Mapping[str, str]) -> dict[str, AssetSpec]:
    """`specs` with flujo's code version where the translator chose none (a translator's own version wins)."""
    return {
        k: spec if spec.code_version is not None else spec.replace_attributes(code_version=versions[k])
        for k, spec in specs.items()
    }
