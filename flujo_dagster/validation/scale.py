"""V-SCALE: how many ops a pipeline expands to, and where Dagster stops coping."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel, runs_in_one_op
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import step_path
from flujo_dagster.validation.findings import Finding

__all__ = ["EXPANDED_OPS_ERROR", "EXPANDED_OPS_WARNING", "expanded_ops", "rule_scale"]

EXPANDED_OPS_WARNING = 250
"""Past this many ops a run pays seconds of plan creation and about 50 ms per op; inline groups help."""
EXPANDED_OPS_ERROR = 1200
"""Past this many ops Dagster's own graph code nears its recursion limit (a flat chain of 1,500 to 2,000 ops
raises RecursionError in dagster 1.13) and plan creation takes tens of seconds."""


def expanded_ops(steps: Sequence[Step], *, in_fanout: bool = False) -> int:
    """The number of ops `steps` compile to (flujo's own first and last ops not included; a Map expanded with
    `inline=False` counts its fan-out, its body's ops once, and its collect)."""
    total = 0
    for step in steps:
        if runs_in_one_op(step, in_fanout=in_fanout):
            total += 1
        elif isinstance(step, Map):
            total += 2 + expanded_ops(step.body, in_fanout=True)
        elif isinstance(step, Loop):
            total += step.max_iterations * (expanded_ops(step.body) + 1) + 1
        elif isinstance(step, Branch):
            total += 2 + sum(expanded_ops(arm) for _, arm in step.arms())
        elif isinstance(step, Parallel):
            total += sum(expanded_ops(arm) for arm in step.branches.values())
        elif isinstance(step, Group):
            total += expanded_ops(step.steps, in_fanout=in_fanout)
        else:
            total += 1
    return total


def _biggest(steps: Sequence[Step], path: str) -> Iterator[tuple[int, str]]:
    for step in steps:
        if isinstance(step, Loop | Branch | Parallel | Group | Map) and not step.inline:
            yield expanded_ops([step]), step_path(path, step.kind, step.name)


def rule_scale(pipeline: Pipeline) -> Iterator[Finding]:
    """V-SCALE: warn past EXPANDED_OPS_WARNING ops, refuse past EXPANDED_OPS_ERROR, naming the biggest part."""
    ops = expanded_ops(pipeline.steps) + 2
    if ops <= EXPANDED_OPS_WARNING:
        return
    biggest = max(_biggest(pipeline.steps, pipeline.name), default=None)
    dominant = biggest is not None and biggest[0] * 2 > ops
    where = f" ({biggest[1]} alone expands to {biggest[0]})" if biggest is not None and dominant else ""
    refused = ops > EXPANDED_OPS_ERROR
    limit = EXPANDED_OPS_ERROR if refused else EXPANDED_OPS_WARNING
    yield Finding(
        code="V-SCALE",
        severity="error" if refused else "warning",
        pipeline=pipeline.name,
        path=pipeline.name,
        message=f"the pipeline expands to {ops} ops{where}, more than {limit}.",
        hint="mark loops and long step chains inline=True (or wrap steps in Group(..., inline=True)) so each "
        "runs in one op",
    )
