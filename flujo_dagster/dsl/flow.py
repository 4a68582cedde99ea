"""Key flow through the DSL tree: what a node reads from before it, and what it writes on every or some path."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.keys import parameter_names, resolve_keys
from flujo_dagster.dsl.steps import Step, remembered
from flujo_dagster.names import step_path

__all__ = ["Flow", "callable_reads", "children", "flow_of", "flow_of_steps", "keys_before_gates", "walk"]


@dataclass(frozen=True)
class Flow:
    """`reads`: keys the node needs from before it (in first-read order); `must`: keys written on every path
    that finishes; `may`: keys written on some path (a superset of `must`)."""

    reads: tuple[str, ...]
    must: frozenset[str]
    may: frozenset[str]


def callable_reads(fn: Callable[..., object]) -> tuple[str, ...]:
    """The keys a predicate or selector reads: its parameter names."""
    return parameter_names(fn)


def _ordered(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for g in groups for k in g))


def flow_of_steps(steps: Sequence[Step], fields: Mapping[str, object]) -> Flow:
    """The flow of a sequence of steps."""
    reads: list[str] = []
    must: set[str] = set()
    may: set[str] = set()
    for index, step in enumerate(steps):
        f = flow_of(step, fields)
        reads.extend(k for k in f.reads if k not in must)
        must |= f.must
        may |= f.may
        if isinstance(step, Approval) and step.on_reject:  # the rest of the sequence runs only if approved
            rest, rejected = flow_of_steps(steps[index + 1 :], fields), flow_of_steps(step.on_reject, fields)
            reads.extend(k for k in _ordered(rest.reads, rejected.reads) if k not in must)
            must |= rest.must & rejected.must
            may |= rest.may | rejected.may
            break
    return Flow(_ordered(reads), frozenset(must), frozenset(may))


def flow_of(step: Step, fields: Mapping[str, object]) -> Flow:
    """The flow of one node (a leaf step or a control-flow node), remembered on the node for `fields`."""
    return remembered(step, "_flujo_flow", fields, lambda: _flow_of(step, fields))


def _flow_of(step: Step, fields: Mapping[str, object]) -> Flow:
    if isinstance(step, Loop):
        body = flow_of_steps(step.body, fields)
        until = [k for k in callable_reads(step.until) if k not in body.must]
        return Flow(_ordered(body.reads, until), body.must, body.may)
    if isinstance(step, Branch):
        selector = (step.on,) if isinstance(step.on, str) else callable_reads(step.on)
        arms = [flow_of_steps(steps, fields) for _, steps in step.arms()]
        must = frozenset.intersection(*(a.must for a in arms)) if arms else frozenset()
        may = frozenset().union(*(a.may for a in arms))
        return Flow(_ordered(selector, *(a.reads for a in arms)), must, may)
    if isinstance(step, Parallel):
        arms = [flow_of_steps(steps, fields) for steps in step.branches.values()]
        may = frozenset().union(*(a.may for a in arms))
        must = frozenset().union(*(a.must for a in arms)) if step.on_branch_failure == "fail" else frozenset()
        return Flow(_ordered(*(a.reads for a in arms)), must, may)
    if isinstance(step, Group):
        return flow_of_steps(step.steps, fields)
    if isinstance(step, Map):
        body = flow_of_steps(step.body, fields)
        reads = [k for k in body.reads if k != step.item]
        kept = [step.result] if step.result not in body.must else []  # the body may leave result as it was
        return Flow(_ordered((step.over,), reads, kept), frozenset({step.into}), frozenset({step.into}))
    keys = resolve_keys(step, fields)
    writes = frozenset(keys.writes or ())
    return Flow(keys.reads, writes, writes)


def children(step: Step) -> list[tuple[str | None, tuple[Step, ...]]]:
    """The step sequences directly inside a control-flow node (or an approval gate's `on_reject` steps), with
    their arm labels (None for a loop body)."""
    if isinstance(step, Loop):
        return [(None, step.body)]
    if isinstance(step, Branch):
        return [(label, steps) for label, steps in step.arms()]
    if isinstance(step, Parallel):
        return [(label, steps) for label, steps in step.branches.items()]
    if isinstance(step, Map):
        return [(None, step.body)]
    if isinstance(step, Group):
        return [(None, step.steps)]
    if isinstance(step, Approval) and step.on_reject:
        return [("rejected", step.on_reject)]
    return []


def walk(steps: Sequence[Step], path: str) -> Iterator[tuple[str, Step]]:
    """Every node below `path`, depth first, with its path (`digest > loop:refine > step:draft`)."""
    for step in steps:
        here = step_path(path, step.kind, step.name)
        yield here, step
        for _, inner in children(step):
            yield from walk(inner, here)


def keys_before_gates(
    steps: Sequence[Step], fields: Mapping[str, object], initial: Sequence[str]
) -> dict[int, frozenset[str]]:
    """For each approval gate (by `id`), the keys written on every path before it, the `initial` keys included:
    the run state a decision is bound to. Never a key written on some path only (reading it, the gate would be
    skipped with its producer). A gate met more than once (a loop body's iterations) keeps the keys it has every
    time."""
    found: dict[int, frozenset[str]] = {}
    _definite(steps, fields, set(initial), found)
    return found


def _definite(
    steps: Sequence[Step], fields: Mapping[str, object], live: set[str], found: dict[int, frozenset[str]]
) -> None:
    """Walk `steps` as the key-flow validation does; `live` (keys with a value on every path) grows as they write."""
    for index, step in enumerate(steps):
        if isinstance(step, Approval):
            here = frozenset(live)
            found[id(step)] = found[id(step)] & here if id(step) in found else here
            if step.on_reject:
                approved, rejected = set(live), set(live)
                _definite(steps[index + 1 :], fields, approved, found)
                _definite(step.on_reject, fields, rejected, found)
                live.update(approved & rejected)
                return
        elif isinstance(step, Group):
            _definite(step.steps, fields, live, found)
        elif isinstance(step, Map):
            _definite(step.body, fields, live | {step.item}, found)
        elif isinstance(step, Loop | Branch | Parallel):
            for _, inner in children(step):
                _definite(inner, fields, set(live), found)
        live.update(flow_of(step, fields).must)
