"""Which ops of a graph-backed asset produce its asset keys, and the checks each asset declares: the compiler wraps
those ops (`ops.checks.checked_op`) and maps the check outputs out of the graph."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from dagster import AssetCheckSpec, AssetKey, DependencyDefinition, OpDefinition, OutputMapping

from flujo_dagster import names
from flujo_dagster.adapter.compile.graph.built import BuiltGraph
from flujo_dagster.adapter.compile.lineage import data_upstream
from flujo_dagster.adapter.ops.checks import AssetPlan, checked_op, context_check_op
from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import (
    AFTER_INPUT,
    CONTEXT_CHECK,
    CONTEXT_CHECK_OP,
    CONTEXT_KEY,
    CONTEXT_OP,
    CONTEXT_OUTPUT,
    TYPE_CHECK,
    io_name,
    op_name,
    step_key,
)

__all__ = ["ReviewPlan", "plan_reviews"]


@dataclass(frozen=True)
class ReviewPlan:
    """What the compiler adds to a graph-backed asset: check specs and the graph outputs they map to."""

    check_specs: tuple[AssetCheckSpec, ...] = ()
    output_mappings: tuple[OutputMapping, ...] = ()


def _region(start: str, upstream: Mapping[str, Sequence[tuple[str, str]]], stops: set[str]) -> frozenset[str]:
    seen = {start}
    frontier = [start]
    while frontier:
        for source, _ in upstream.get(frontier.pop(), ()):
            if source and source not in seen and source not in stops:
                seen.add(source)
                frontier.append(source)
    return frozenset(seen)


def _is_gate(definition: object) -> TypeGuard[OpDefinition]:
    return isinstance(definition, OpDefinition) and names.op_kind(definition.tags) is names.OpKind.APPROVAL


def _shows(definition: object, key: str) -> bool:
    return _is_gate(definition) and io_name(key) in definition.output_dict


def _specs(pipeline: Pipeline, key: str, asset_key: AssetKey) -> tuple[tuple[AssetCheckSpec, Check | None], ...]:
    shown = "the final context" if key == CONTEXT_KEY else f"key {key!r}"
    typed = AssetCheckSpec(
        TYPE_CHECK,
        asset=asset_key,
        blocking=True,
        description=f"The stored value of {shown} loads back as its declared type.",
    )
    user = [
        (AssetCheckSpec(c.name, asset=asset_key, blocking=c.blocking, description=c.description), c)
        for c in pipeline.checks
        if c.key == key
    ]
    return ((typed, None), *user)


def _context_check(pipeline: Pipeline, built: BuiltGraph, host: AssetKey) -> tuple[AssetCheckSpec, OutputMapping]:
    """Add the `flujo_context_check` op after `flujo_context` (the final context is not an asset): it reports the
    `flujo_final_context` check on `host`, the pipeline's last asset."""
    spec = AssetCheckSpec(
        CONTEXT_CHECK,
        asset=host,
        blocking=True,
        description=f"The run's final {pipeline.context.__name__} validated, was stored and loads back.",
    )
    step = step_key(pipeline.name, True, CONTEXT_OP)
    name = op_name(pipeline.name, CONTEXT_CHECK_OP)
    built.defs[CONTEXT_CHECK_OP] = context_check_op(name, pipeline.context, spec, context_step=step)
    built.deps[CONTEXT_CHECK_OP] = {AFTER_INPUT: DependencyDefinition(CONTEXT_OP, CONTEXT_OUTPUT)}
    output = spec.get_python_identifier()
    return spec, OutputMapping(output, CONTEXT_CHECK_OP, output)


def plan_reviews(pipeline: Pipeline, built: BuiltGraph, keys: Mapping[str, AssetKey]) -> ReviewPlan:
    """Wrap each asset-producing op of `built` (replaced in `built.defs`) and return the checks to declare.
    `keys`: the asset key of each asset's key name, and of `CONTEXT_KEY` when the final context is an asset
    (else the `flujo_context_check` op is added). The checks passed validation: each is on an asset key, under a
    name of its own (CHECK-001 to CHECK-003)."""
    assert all(c.key in pipeline.assets for c in pipeline.checks), "validation refuses it (CHECK-001)"
    producers = {k: built.live[k] for k in pipeline.assets}
    if CONTEXT_KEY in keys:
        producers[CONTEXT_KEY] = (CONTEXT_OP, CONTEXT_OUTPUT)
    asset_ops = {op for op, _ in producers.values()}
    every_node = frozenset(built.defs)
    upstream = data_upstream(built)

    def keys_of(nodes: frozenset[str]) -> frozenset[str]:
        return frozenset(step_key(pipeline.name, True, n) for n in nodes)

    plans: dict[str, list[AssetPlan]] = {}
    for key, (op, out) in producers.items():
        # the final context is made by the whole run; any other asset by the steps since the nearest assets
        region = every_node if key == CONTEXT_KEY else _region(op, upstream, asset_ops - {op})
        depends = every_node if key == CONTEXT_KEY else _region(op, upstream, set())
        gates = frozenset(n for n in region if n != op and _shows(built.defs[n], key))
        approvals = frozenset(n for n in depends if n != op and _is_gate(built.defs[n]))
        plans.setdefault(op, []).append(
            AssetPlan(
                output=out,
                key=key,
                asset_key=keys[key],
                region=keys_of(region),
                upstream=keys_of(depends),
                gates=keys_of(gates),
                approvals=keys_of(approvals),
                checks=_specs(pipeline, key, keys[key]),
            )
        )
    specs: list[AssetCheckSpec] = []
    mappings: list[OutputMapping] = []
    for node, node_plans in plans.items():
        definition = built.defs[node]
        if not isinstance(definition, OpDefinition):
            raise ConfigurationError(f"pipeline {pipeline.name!r}: asset producer {node!r} is not an op")
        shared = any(d is definition for n, d in built.defs.items() if n != node)
        name = f"{definition.name}__{node}" if shared else definition.name  # Dagster wants one def per name
        built.defs[node] = checked_op(definition, node_plans, name=name)
        for plan in node_plans:
            for spec, _ in plan.checks:
                specs.append(spec)
                mappings.append(OutputMapping(spec.get_python_identifier(), node, spec.get_python_identifier()))
    if CONTEXT_KEY not in keys:
        spec, mapping = _context_check(pipeline, built, keys[pipeline.assets[-1]])
        specs.append(spec)
        mappings.append(mapping)
    return ReviewPlan(tuple(specs), tuple(mappings))
