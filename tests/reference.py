"""A reference evaluator for the DSL: a plain, sequential Python interpreter over a dict of key values.

It is the specification the property tests (tests/test_property.py) hold the compiler and the in-process
interpreter to, so it is written from the documented semantics (docs/concepts.md, the DSL docstrings) and
shares no execution code with the library: it imports only `flujo_dagster.dsl` (the data classes), pydantic and
the standard library, never `flujo_dagster.adapter` or `flujo_dagster.runtime` (a test checks this).

Semantics implemented:

- The state starts with every field's default, overridden by the run inputs (inputs validated by the model).
- A function step reads the keys named by `input_keys` or its parameters, and writes `output_keys`, else the
  key named like the step, else the fields of the model its return annotation names (when all are keys).
  With one written key (and no model return) the returned value is that key's value; otherwise the key's
  value is taken from the returned mapping (item) or object (attribute). Values are validated against the
  field's type (lax), as a stored value would be.
- Retries: a step whose function raises is called again, up to `retry.max_retries` more times, unless the
  error's `allow_retries` attribute is False (a `dagster.Failure(allow_retries=False)`); the run fails with the
  last call's error. Errors the library itself raises about a step (a value of the wrong type, configuration,
  budgets) are never retried; they are not modelled here, as the generated steps never cause them. `Attempts`
  counts, per step name, the calls and the failed calls that were tried again.
- `Group`: its steps in order. `Loop`: the body, then `until` over the keys it names; exits when it is true;
  after `max_iterations` iterations, exhaustion fails (`on_exhausted="fail"`) or goes on with the last
  iteration's keys. `Branch`: the case whose value equals key `on` (or what the selector returns), else the
  default, else it fails. `Parallel`: every branch runs on a copy of the keys from before the Parallel; the keys
  each branch wrote are merged (two branches writing one key is an error); with `on_branch_failure="ignore"` a
  branch whose own step failed contributes nothing (control-flow failures are never ignored). `Map`: the body
  runs per element of `over` on a copy of the state with `item` bound; `into` gets each copy's `result` value,
  in input order, and nothing else the body wrote escapes.
"""

from __future__ import annotations

import inspect
import typing
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter

from flujo_dagster.dsl import AgentStep, Branch, FunctionStep, Group, Loop, Map, Parallel, Pipeline, Step

__all__ = ["Attempts", "ControlFailure", "RunFails", "StepFailure", "evaluate", "keys_of", "run_steps"]

State = MutableMapping[str, object]


class RunFails(Exception):
    """The reference evaluator found the run must fail. `nodes` names the DSL node that failed (several
    when parallel branches or map items failed at the same time: any of them may be the one reported first)."""

    def __init__(self, nodes: Sequence[str], message: str) -> None:
        super().__init__(f"{', '.join(nodes)}: {message}")
        self.nodes = tuple(nodes)


class ControlFailure(RunFails):
    """A loop exhausted with `on_exhausted="fail"`, or a branch with no matching case and no default."""


class StepFailure(RunFails):
    """A step's own function raised (on its last attempt)."""


@dataclass
class Attempts:
    """Per step name: how often its function was called, and how many of the failed calls were tried again."""

    calls: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)


def _parameters(fn: Callable[..., object]) -> tuple[str, ...]:
    return tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )


def _returned_model_keys(fn: Callable[..., object], fields: Mapping[str, Any]) -> tuple[str, ...] | None:
    try:
        returned = typing.get_type_hints(fn).get("return")
    except (NameError, TypeError):
        return None
    if isinstance(returned, type) and issubclass(returned, BaseModel):
        names = tuple(returned.model_fields)
        if names and all(n in fields for n in names):
            return names
    return None


def keys_of(step: FunctionStep, fields: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(reads, writes, split) of a function step; split: the result holds the keys as items or attributes."""
    reads = step.input_keys if step.input_keys is not None else _parameters(step.fn)
    if step.output_keys is not None:
        return reads, step.output_keys, len(step.output_keys) != 1
    if step.name in fields:
        return reads, (step.name,), False
    model_keys = _returned_model_keys(step.fn, fields)
    if model_keys is None:
        raise TypeError(f"reference: cannot tell which keys step {step.name!r} writes")
    return reads, model_keys, True


def _typed(fields: Mapping[str, Any], key: str, value: object) -> object:
    return TypeAdapter(fields[key].annotation).validate_python(value)


def _call(step: FunctionStep, values: Mapping[str, object], attempts: Attempts) -> object:
    """Call the step's function until it returns, it is out of retries, or its error refuses a retry."""
    tries = max(step.retry.max_retries, 0) + 1
    for number in range(1, tries + 1):
        attempts.calls[step.name] += 1
        try:
            return step.fn(**values)
        except Exception as exc:
            if number == tries or getattr(exc, "allow_retries", True) is False:
                raise StepFailure((step.name,), f"{type(exc).__name__}: {exc}") from exc
            attempts.retried[step.name] += 1
    raise AssertionError("unreachable")


def _function(step: FunctionStep, state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    reads, writes, split = keys_of(step, fields)
    result = _call(step, {k: state[k] for k in reads}, attempts)
    if inspect.isawaitable(result):
        raise TypeError(f"reference: async steps are not supported (step {step.name!r})")
    for key in writes:
        if not split:
            value = result
        elif isinstance(result, Mapping):
            value = result[key]
        else:
            value = getattr(result, key)
        state[key] = _typed(fields, key, value)
    return set(writes)


def _loop(loop: Loop, state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    written: set[str] = set()
    for _ in range(max(loop.max_iterations, 1)):
        written |= run_steps(loop.body, state, fields, attempts)
        if loop.until(**{k: state[k] for k in _parameters(loop.until)}):
            return written
    if loop.on_exhausted == "fail":
        raise ControlFailure((loop.name,), f"exhausted after {loop.max_iterations} iteration(s)")
    return written


def _branch(branch: Branch, state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    if isinstance(branch.on, str):
        value: object = state[branch.on]
    else:
        value = branch.on(**{k: state[k] for k in _parameters(branch.on)})
    if value in branch.cases:
        return run_steps(branch.cases[value], state, fields, attempts)
    if branch.default is not None:
        return run_steps(branch.default, state, fields, attempts)
    raise ControlFailure((branch.name,), f"no case for {value!r}")


def _parallel(parallel: Parallel, state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    before = dict(state)
    merged: dict[str, object] = {}
    writer: dict[str, str] = {}
    failures: list[RunFails] = []
    for label, steps in parallel.branches.items():  # every branch finishes, even when another one failed
        local = dict(before)
        try:
            wrote = run_steps(steps, local, fields, attempts)
        except StepFailure as exc:
            if parallel.on_branch_failure == "fail":
                failures.append(exc)
            continue
        except ControlFailure as exc:  # never ignored
            failures.append(exc)
            continue
        for key in wrote:
            if key in writer:
                raise AssertionError(f"reference: branches {writer[key]!r} and {label!r} both wrote {key!r}")
            writer[key] = label
            merged[key] = local[key]
    _raise_any(failures)
    state.update(merged)
    return set(merged)


def _raise_any(failures: Sequence[RunFails]) -> None:
    """Raise one failure naming every node that failed (control-flow failures first: they are never ignored)."""
    if not failures:
        return
    nodes = tuple(dict.fromkeys(n for f in failures for n in f.nodes))
    kind = ControlFailure if any(isinstance(f, ControlFailure) for f in failures) else StepFailure
    raise kind(nodes, "; ".join(str(f) for f in failures))


def _map(node: Map, state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    results: list[object] = []
    elements = state[node.over]
    assert isinstance(elements, list), f"reference: Map {node.name!r} over a non-list {elements!r}"
    failures: list[RunFails] = []
    for element in elements:  # every item finishes, even when another one failed
        local = dict(state)
        local[node.item] = element
        try:
            run_steps(node.body, local, fields, attempts)
        except RunFails as exc:
            failures.append(exc)
            continue
        results.append(local[node.result])
    _raise_any(failures)
    state[node.into] = _typed(fields, node.into, results)
    return {node.into}


def run_steps(steps: Sequence[Step], state: State, fields: Mapping[str, Any], attempts: Attempts) -> set[str]:
    """Run `steps` in order on `state`, counting calls in `attempts`; return the keys they wrote."""
    written: set[str] = set()
    for step in steps:
        if isinstance(step, FunctionStep):
            written |= _function(step, state, fields, attempts)
        elif isinstance(step, Loop):
            written |= _loop(step, state, fields, attempts)
        elif isinstance(step, Branch):
            written |= _branch(step, state, fields, attempts)
        elif isinstance(step, Parallel):
            written |= _parallel(step, state, fields, attempts)
        elif isinstance(step, Map):
            written |= _map(step, state, fields, attempts)
        elif isinstance(step, Group):
            written |= run_steps(step.steps, state, fields, attempts)
        elif isinstance(step, AgentStep):
            raise TypeError(f"reference: agent steps are not supported (step {step.name!r})")
        else:
            raise TypeError(f"reference: unknown node {type(step).__name__}")
    return written


def evaluate(pipeline: Pipeline, inputs: Mapping[str, object], attempts: Attempts | None = None) -> BaseModel:
    """The final context of running `pipeline` on `inputs`; raises `RunFails` when the run must fail. Counts
    the calls of every step in `attempts` (also when the run fails)."""
    fields = pipeline.context.model_fields
    unknown = set(inputs) - set(fields)
    assert not unknown, f"reference: unknown inputs {sorted(unknown)}"
    state: dict[str, object] = {}
    for key, info in fields.items():
        if key in inputs:
            state[key] = _typed(fields, key, inputs[key])
        elif not info.is_required():
            state[key] = info.get_default(call_default_factory=True)
    run_steps(pipeline.steps, state, fields, attempts if attempts is not None else Attempts())
    return pipeline.context.model_validate(state)
