"""Validation rules over a pipeline's DSL tree. Each rule yields findings; the catalog is docs/validation.md."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import get_origin

from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.keys import annotations_of, resolve_keys, return_annotation
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep
from flujo_dagster.names import DAGSTER_RESERVED_NAMES, io_name, key_path
from flujo_dagster.validation.approvals import rule_approvals
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.injection import rule_injection
from flujo_dagster.validation.keyflow import rule_keys
from flujo_dagster.validation.scale import rule_scale
from flujo_dagster.validation.schedules import rule_partitions, rule_schedule
from flujo_dagster.validation.typecompat import (
    ambiguous_union_problem,
    is_assignable,
    json_round_trip_problem,
    type_name,
    untyped_problem,
)
from flujo_dagster.validation.upstream import rule_upstream

__all__ = ["RESERVED_STEP_NAMES", "RULES"]

Rule = Callable[[Pipeline], Iterator[Finding]]

#: Op names the compiler uses itself, and words Dagster refuses as names.
RESERVED_STEP_NAMES = frozenset({"flujo_inputs", "flujo_context", *DAGSTER_RESERVED_NAMES})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EMPTY = inspect.Parameter.empty


def rule_names(pipeline: Pipeline) -> Iterator[Finding]:
    """V-NAME: the pipeline's and steps' names are legal and not reserved; step names are unique."""
    seen: set[str] = set()
    yield from _pipeline_name(pipeline)
    for path, s in walk(pipeline.steps, pipeline.name):
        if not _NAME_RE.match(s.name):
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"step name {s.name!r} is not a legal op name.",
                hint="use letters, digits and underscores, not starting with a digit",
            )
        elif s.name in RESERVED_STEP_NAMES or s.name.startswith("flujo_"):
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"step name {s.name!r} is reserved.",
                hint="rename the step (name=...)",
            )
        elif "__" in s.name:
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"step name {s.name!r} contains '__', which separates the parts of derived op names.",
                hint="use single underscores (name=...)",
            )
        if s.name in seen:
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"step name {s.name!r} is used more than once in pipeline {pipeline.name!r}.",
                hint="give each step a unique name (name=...)",
            )
        seen.add(s.name)
    yield from _key_names(pipeline)


def _pipeline_name(pipeline: Pipeline) -> Iterator[Finding]:
    name = pipeline.name
    if not _NAME_RE.match(name):
        problem, hint = "is not a legal Dagster name", "use letters, digits and underscores, not starting with a digit"
    elif name in DAGSTER_RESERVED_NAMES or name.startswith("flujo_"):
        problem, hint = "is reserved (by Dagster, or for flujo's own jobs)", "rename the pipeline"
    elif "__" in name:
        problem, hint = "contains '__', which separates the parts of derived op names", "use single underscores"
    else:
        return
    yield Finding(
        code="V-NAME",
        severity="error",
        pipeline=name,
        path=name,
        message=f"pipeline name {name!r} {problem}.",
        hint=hint,
    )


def _key_names(pipeline: Pipeline) -> Iterator[Finding]:
    """Keys whose input/output names collide, keys named like the compiler's own outputs, repeated assets."""
    carriers: dict[str, str] = {}
    for key in pipeline.fields:
        name = io_name(key)
        if key.startswith("flujo_") or name in carriers:
            clash = (
                "'flujo_' names are the compiler's own"
                if key.startswith("flujo_")
                else (
                    f"Dagster reserves {carriers[name] if carriers[name] != name else key!r}, so both would be carried "
                    f"as {name!r}"
                )
            )
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=key_path(pipeline.name, key),
                message=f"key name {key!r} cannot be used: {clash}.",
                hint="rename the context field",
            )
        carriers.setdefault(name, key)
    repeated = sorted({k for k in pipeline.assets if pipeline.assets.count(k) > 1})
    for key in repeated:
        yield Finding(
            code="V-NAME",
            severity="error",
            pipeline=pipeline.name,
            path=pipeline.name,
            message=f"asset {key!r} is listed more than once.",
            hint="list each key once in assets=[...]",
        )


def _function_type_findings(pipeline: Pipeline, s: FunctionStep, path: str) -> Iterator[Finding]:
    fields = pipeline.fields
    keys = resolve_keys(s, fields)
    hints = annotations_of(s.fn)
    for key in keys.reads:
        if key in fields and key in hints and not is_assignable(fields[key], hints[key]):
            yield Finding(
                code="V-TYPE",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=(
                    f"parameter {key!r} is annotated {type_name(hints[key])} but key {key!r} holds "
                    f"{type_name(fields[key])}."
                ),
                hint=f"annotate the parameter as {type_name(fields[key])}, or change the context field",
            )
    returned = return_annotation(s.fn)
    if keys.writes is None or returned is _EMPTY or keys.split:
        return
    (key,) = keys.writes
    if key in fields and not is_assignable(returned, fields[key]):
        yield Finding(
            code="V-TYPE",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=(f"returns {type_name(returned)} but writes key {key!r}, which holds {type_name(fields[key])}."),
            hint=f"return {type_name(fields[key])}, or change the context field",
        )


def _agent_type_findings(pipeline: Pipeline, s: AgentStep, path: str) -> Iterator[Finding]:
    fields = pipeline.fields
    key = s.output_key or s.name
    output_type: object = getattr(s.agent, "output_type", None)
    # a class or a generic alias / union (list[Source], str | None); not pydantic-ai's output specs (lists, markers)
    is_annotation = isinstance(output_type, type) or get_origin(output_type) is not None
    if key in fields and is_annotation and not is_assignable(output_type, fields[key]):
        yield Finding(
            code="V-TYPE",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=(
                f"the agent's output_type is {type_name(output_type)} but key {key!r} holds {type_name(fields[key])}."
            ),
            hint=f"build the agent with output_type={type_name(fields[key])}, or change the context field",
        )


def rule_types(pipeline: Pipeline) -> Iterator[Finding]:
    """V-TYPE: annotations agree with the context's field types; field types survive JSON."""
    for name, annotation in pipeline.fields.items():
        problem = json_round_trip_problem(annotation)
        if problem is not None:
            yield Finding(
                code="V-TYPE",
                severity="error",
                pipeline=pipeline.name,
                path=key_path(pipeline.name, name),
                message=f"key {name!r} ({type_name(annotation)}) does not round-trip through JSON: {problem}.",
                hint="every key is stored as JSON; choose a JSON-friendly type",
            )
        elif (ambiguity := ambiguous_union_problem(annotation)) is not None:
            yield Finding(
                code="V-TYPE",
                severity="warning",
                pipeline=pipeline.name,
                path=key_path(pipeline.name, name),
                message=f"key {name!r} ({type_name(annotation)}) is an ambiguous union: {ambiguity}.",
                hint="use a discriminated union, or wrap the members in models that JSON can tell apart",
            )
        elif (untyped := untyped_problem(annotation)) is not None:
            yield Finding(
                code="V-TYPE",
                severity="warning",
                pipeline=pipeline.name,
                path=key_path(pipeline.name, name),
                message=f"key {name!r} ({type_name(annotation)}) is not fully typed: {untyped}.",
                hint="declare the concrete type",
            )
    for path, s in walk(pipeline.steps, pipeline.name):
        if isinstance(s, FunctionStep):
            yield from _function_type_findings(pipeline, s, path)
        elif isinstance(s, AgentStep):
            yield from _agent_type_findings(pipeline, s, path)


def rule_agents(pipeline: Pipeline) -> Iterator[Finding]:
    """V-A1: an agent step has an agent, and a model known at definition time."""
    for path, s in walk(pipeline.steps, pipeline.name):
        if not isinstance(s, AgentStep):
            continue
        if s.agent is None:
            yield Finding(
                code="V-A1",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message="agent step has no agent.",
                hint="pass a pydantic-ai Agent: agent_step(name, agent=Agent(...), prompt=...)",
            )
        elif s.model_id() is None:
            yield Finding(
                code="V-A1",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message="agent step has no model: neither the agent nor the step names one.",
                hint="build the agent with a model ('provider:model', defer_model_check=True) or pass model=",
            )


RULES: tuple[Rule, ...] = (
    rule_names,
    rule_keys,
    rule_types,
    rule_agents,
    rule_injection,
    rule_scale,
    rule_approvals,
    rule_schedule,
    rule_partitions,
    rule_upstream,
)
