"""Key-flow rules: V-CTX1 (read before written on some path), V-CTX2 (unknown key), V-CTX3 (writes cannot
be inferred), V-PAR1 (parallel branches writing one key), V-FLOW (malformed loops and branches)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.flow import callable_reads, flow_of_steps
from flujo_dagster.dsl.keys import resolve_keys
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import step_path
from flujo_dagster.validation.findings import Finding

__all__ = ["rule_keys"]


def _close(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {match[0]!r}?" if match else f"known keys: {', '.join(known)}"


def _writes_unknown(pipeline: str, step: Step, path: str) -> Finding:
    """V-CTX3: the keys `step` writes cannot be inferred."""
    return Finding(
        code="V-CTX3",
        severity="error",
        pipeline=pipeline,
        path=path,
        message=(
            f"cannot tell which keys step {step.name!r} writes: no key is named {step.name!r} and it "
            "does not return a model whose fields are all keys."
        ),
        hint="pass output_keys=[...] to @step, or name the step after the key it writes",
    )


def _loop_shape(pipeline: str, loop: Loop, path: str) -> Iterator[Finding]:
    """V-FLOW: a loop that could not run its body."""
    if loop.max_iterations < 1:
        yield Finding(
            code="V-FLOW",
            severity="error",
            pipeline=pipeline,
            path=path,
            message=f"max_iterations is {loop.max_iterations}; a loop runs its body at least once.",
            hint="set max_iterations to 1 or more",
        )


def _no_arms(pipeline: str, path: str) -> Finding:
    """V-FLOW: a branch with nothing to run."""
    return Finding(
        code="V-FLOW",
        severity="error",
        pipeline=pipeline,
        path=path,
        message="branch has no case and no default.",
        hint="give it cases={value: [steps]} and, if every value must be handled, a default",
    )


def _parallel_shape(pipeline: str, parallel: Parallel, path: str) -> Iterator[Finding]:
    """V-FLOW: `on_branch_failure="ignore"` on a Parallel expanded into ops."""
    if parallel.on_branch_failure == "ignore" and not parallel.inline:
        yield Finding(
            code="V-FLOW",
            severity="error",
            pipeline=pipeline,
            path=path,
            message="on_branch_failure='ignore' is supported for parallel branches run in one op, not with "
            "inline=False.",
            hint="use inline=True (the default), or on_branch_failure='fail'",
        )


def _parallel_writers(pipeline: str, parallel: Parallel, fields: Mapping[str, object], path: str) -> Iterator[Finding]:
    """V-PAR1: a key two branches of `parallel` may write."""
    writers: dict[str, list[str]] = {}
    for label, steps in parallel.branches.items():
        for key in sorted(flow_of_steps(steps, fields).may):
            writers.setdefault(key, []).append(label)
    for key, labels in writers.items():
        if len(labels) > 1:
            yield Finding(
                code="V-PAR1",
                severity="error",
                pipeline=pipeline,
                path=path,
                message=f"branches {', '.join(map(repr, labels))} all write key {key!r}; parallel branches "
                "must write different keys.",
                hint="write a separate key in each branch and combine them in a step after the Parallel",
            )


def _map_result(pipeline: str, node: Map, body_must: frozenset[str], path: str) -> Iterator[Finding]:
    """V-FLOW: an expanded Map whose body does not write its result on every path (`body_must`)."""
    if not node.inline and node.result not in (*body_must, node.item):
        yield Finding(
            code="V-FLOW",
            severity="error",
            pipeline=pipeline,
            path=path,
            message=f"with inline=False each element's {node.result!r} is collected from the op that writes "
            "it, but the body does not write it on every path.",
            hint=f"write {node.result!r} on every path of the body, or use inline=True (the default)",
        )


def _map_result_unwritten(pipeline: str, node: Map, path: str) -> Finding:
    """V-CTX1: a Map's result key that its body may leave without a value."""
    return Finding(
        code="V-CTX1",
        severity="error",
        pipeline=pipeline,
        path=path,
        message=f"the body does not write the result key {node.result!r} on every path.",
        hint=f"write {node.result!r} in the body, or give the field a default",
    )


class _Keys:
    """Key references against the context model: unknown keys (V-CTX2), reads of keys without a value (V-CTX1)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.fields = pipeline.fields
        self.known = list(self.fields)
        self.model = pipeline.context.__name__
        self.name = pipeline.name

    def unknown(self, key: str, path: str, verb: str) -> Finding:
        return Finding(
            code="V-CTX2",
            severity="error",
            pipeline=self.name,
            path=path,
            message=f"{verb} unknown key {key!r}: it is not a field of {self.model}.",
            hint=_close(key, self.known),
        )

    def reads(self, keys: Sequence[str], live: set[str], path: str, *, who: str = "") -> Iterator[Finding]:
        for key in keys:
            if key not in self.fields:
                yield self.unknown(key, path, f"{who}reads")
            elif key not in live:
                yield Finding(
                    code="V-CTX1",
                    severity="error",
                    pipeline=self.name,
                    path=path,
                    message=f"{who}reads key {key!r} before any step writes it, and it has no default.",
                    hint=f"write {key!r} in an earlier step, or give the field a default",
                )


class _Checker:
    def __init__(self, pipeline: Pipeline) -> None:
        self.keys = _Keys(pipeline)
        self.name = pipeline.name
        self.fields = pipeline.fields

    def steps(self, steps: Sequence[Step], live: set[str], path: str) -> Iterator[Finding]:
        """Check `steps` in order; `live` (keys with a value on every path) grows as they write."""
        for index, step in enumerate(steps):
            here = step_path(path, step.kind, step.name)
            if isinstance(step, Approval) and step.on_reject:
                # approved: the rest of the sequence runs; rejected: the on_reject steps do instead
                yield from self.leaf(step, live, here)
                approved, rejected = set(live), set(live)
                yield from self.steps(steps[index + 1 :], approved, path)
                yield from self.steps(step.on_reject, rejected, here)
                live.update(approved & rejected)
                return
            if isinstance(step, Loop):
                yield from self.loop(step, live, here)
            elif isinstance(step, Branch):
                yield from self.branch(step, live, here)
            elif isinstance(step, Parallel):
                yield from self.parallel(step, live, here)
            elif isinstance(step, Map):
                yield from self.map(step, live, here)
            elif isinstance(step, Group):
                yield from self.steps(step.steps, live, here)
            else:
                yield from self.leaf(step, live, here)

    def leaf(self, step: Step, live: set[str], path: str) -> Iterator[Finding]:
        keys = resolve_keys(step, self.fields)
        yield from self.keys.reads(keys.reads, live, path)
        if keys.writes is None:
            yield _writes_unknown(self.name, step, path)
            return
        yield from (self.keys.unknown(key, path, "writes") for key in keys.writes if key not in self.fields)
        live.update(keys.writes)

    def loop(self, loop: Loop, live: set[str], path: str) -> Iterator[Finding]:
        yield from _loop_shape(self.name, loop, path)
        inner = set(live)
        yield from self.steps(loop.body, inner, path)
        yield from self.keys.reads(callable_reads(loop.until), inner, path, who="until ")
        live.update(inner)

    def branch(self, branch: Branch, live: set[str], path: str) -> Iterator[Finding]:
        on = (branch.on,) if isinstance(branch.on, str) else callable_reads(branch.on)
        yield from self.keys.reads(on, live, path, who="on ")
        arms = branch.arms()
        if not arms:
            yield _no_arms(self.name, path)
            return
        after: list[set[str]] = []
        for _, steps in arms:
            inner = set(live)
            yield from self.steps(steps, inner, path)
            after.append(inner)
        live.update(set.intersection(*after))

    def parallel(self, parallel: Parallel, live: set[str], path: str) -> Iterator[Finding]:
        yield from _parallel_shape(self.name, parallel, path)
        for steps in parallel.branches.values():
            yield from self.steps(steps, set(live), path)
        yield from _parallel_writers(self.name, parallel, self.fields, path)
        if parallel.on_branch_failure == "fail":
            live.update(flow_of_steps([parallel], self.fields).must)

    def map(self, node: Map, live: set[str], path: str) -> Iterator[Finding]:
        yield from self.keys.reads((node.over,), live, path, who="over ")
        for role, key in (("item", node.item), ("result", node.result), ("into", node.into)):
            if key not in self.fields:
                yield self.keys.unknown(key, path, f"names as {role} an")
        inner = set(live) | {node.item}
        yield from self.steps(node.body, inner, path)
        yield from _map_result(self.name, node, flow_of_steps(node.body, self.fields).must, path)
        if node.result in self.fields and node.result not in inner:
            yield _map_result_unwritten(self.name, node, path)
        live.add(node.into)


def rule_keys(pipeline: Pipeline) -> Iterator[Finding]:
    """Key flow over the whole tree, and the end of the pipeline: every key without a default is written on
    every path (the final context needs it)."""
    checker = _Checker(pipeline)
    live = set(pipeline.initial_keys())
    yield from checker.steps(pipeline.steps, live, pipeline.name)
    written = pipeline.written_keys()
    for key in pipeline.context.model_fields:
        if key in written and key not in live and not pipeline.has_default(key):
            yield Finding(
                code="V-CTX1",
                severity="error",
                pipeline=pipeline.name,
                path=pipeline.name,
                message=f"key {key!r} has no default and is not written on every path through the pipeline.",
                hint=f"give {key!r} a default, or write it on every branch",
            )
    for key in pipeline.assets:
        if key not in checker.fields:
            yield Finding(
                code="V-CTX2",
                severity="error",
                pipeline=pipeline.name,
                path=pipeline.name,
                message=f"asset {key!r} is not a field of {checker.keys.model}.",
                hint=_close(key, checker.keys.known),
            )
