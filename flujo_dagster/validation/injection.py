"""V-INJ: what Dagster fills in steps is well declared: `resources=` names real parameters (of an agent step's
`deps`), and `AssetExecutionContext` is asked for only where Dagster gives it (a pipeline with assets)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.keys import parameter_names, step_injections
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.validation.findings import Finding

__all__ = ["rule_injection"]


def _finding(pipeline: Pipeline, path: str, message: str, hint: str) -> Finding:
    return Finding(code="V-INJ", severity="error", pipeline=pipeline.name, path=path, message=message, hint=hint)


def _filled(step: Step) -> Callable[..., object] | None:
    """The callable whose parameters Dagster fills: a function step's function, an agent step's `deps`."""
    if isinstance(step, FunctionStep):
        return step.fn
    if isinstance(step, AgentStep) and step.deps is not None:
        return step.deps
    return None


def _declared(pipeline: Pipeline, step: Step, path: str) -> Iterator[Finding]:
    declared = getattr(step, "resources", ())
    fn = _filled(step)
    if declared and fn is None:
        yield _finding(
            pipeline,
            path,
            f"resources= names {', '.join(p for p, _ in declared)}, but the step has no deps= to receive them.",
            "give the agent step deps=<a function taking those parameters>, or drop resources=",
        )
        return
    try:
        params = set(parameter_names(fn)) if fn is not None else set()
    except (TypeError, ValueError):  # no signature: reported by the key rules
        return
    for parameter, key in declared:
        if parameter not in params:
            yield _finding(
                pipeline,
                path,
                f"resources= maps parameter {parameter!r} to resource {key!r}, but "
                f"{getattr(fn, '__name__', 'the function')} has no parameter {parameter!r}.",
                f"name one of its parameters ({', '.join(sorted(params)) or 'it has none'})",
            )


def rule_injection(pipeline: Pipeline) -> Iterator[Finding]:
    """V-INJ over every leaf step of `pipeline`."""
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, FunctionStep | AgentStep):
            continue
        findings = list(_declared(pipeline, step, path))
        yield from findings
        if findings:
            continue
        try:
            wanted = step_injections(step)
        except (TypeError, ValueError):
            continue
        for parameter in sorted(p for p in wanted if p in pipeline.fields):
            yield Finding(
                code="V-INJ",
                severity="warning",
                pipeline=pipeline.name,
                path=path,
                message=f"parameter {parameter!r} receives a resource or the execution context, but it is also a "
                "context key's name: the step does not read that key.",
                hint="rename the parameter (with resources={'<new name>': '<resource key>'} for a resource), or the "
                "context field",
            )
        if pipeline.assets:
            continue
        for parameter in sorted(p for p, i in wanted.items() if i.context == "asset"):
            yield _finding(
                pipeline,
                path,
                f"parameter {parameter!r} asks for an AssetExecutionContext, but the pipeline has no assets, and "
                "Dagster gives one only to ops that are part of an asset.",
                "annotate it dagster.OpExecutionContext, or give the pipeline assets=[...]",
            )
