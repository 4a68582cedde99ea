"""Which context keys a step reads and writes, inferred from signatures or given explicitly."""

from __future__ import annotations

import functools
import inspect
import string
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.injection import Injection, injection_for
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step, remembered

__all__ = [
    "StepKeys",
    "annotations_of",
    "injections",
    "key_parameters",
    "parameter_names",
    "prompt_keys",
    "resolve_keys",
    "resource_keys",
    "return_annotation",
    "step_injections",
    "template_fields",
]

_NO_ANNOTATION = inspect.Parameter.empty


@dataclass(frozen=True, kw_only=True)
class StepKeys:
    """The keys a step reads and writes.

    `writes` is None when it cannot be inferred (rule V-CTX3). `split` is True when the step returns one
    object whose attributes (or mapping items) are the written keys.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...] | None
    split: bool = False


def annotations_of(fn: Callable[..., object]) -> dict[str, object]:
    """Resolved annotations of a function (string annotations evaluated). An annotation that cannot be
    resolved (a name defined only inside a function) is left out, so no rule judges it."""
    try:
        return dict(_annotations_cached(fn))
    except TypeError:  # an unhashable callable object
        return _annotations(fn)


@functools.lru_cache(maxsize=4096)
def _annotations_cached(fn: Callable[..., object]) -> dict[str, object]:
    return _annotations(fn)


def _annotations(fn: Callable[..., object]) -> dict[str, object]:
    try:
        return dict(typing.get_type_hints(fn, include_extras=True))
    except (NameError, TypeError):
        return _resolve_each(fn)


def _resolve_each(fn: Callable[..., object]) -> dict[str, object]:
    raw: dict[str, object] = dict(getattr(fn, "__annotations__", {}))
    namespace = dict(getattr(fn, "__globals__", {}))
    resolved: dict[str, object] = {}
    for name, annotation in raw.items():
        if not isinstance(annotation, str):
            resolved[name] = annotation
            continue
        try:
            resolved[name] = typing.get_type_hints(_Probe(annotation), namespace, include_extras=True)["x"]
        except (NameError, TypeError, SyntaxError):
            continue
    return resolved


class _Probe:
    """An object whose only annotation is `text`, for resolving one annotation string at a time."""

    def __init__(self, text: str) -> None:
        self.__annotations__ = {"x": text}


def return_annotation(fn: Callable[..., object]) -> object:
    """The function's return annotation, or `inspect.Parameter.empty`."""
    return annotations_of(fn).get("return", _NO_ANNOTATION)


def parameter_names(fn: Callable[..., object]) -> tuple[str, ...]:
    """The names of a function's named parameters (not `*args`/`**kwargs`)."""
    params = inspect.signature(fn).parameters.values()
    return tuple(
        p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )


def injections(fn: Callable[..., object], resources: tuple[tuple[str, str], ...] = ()) -> dict[str, Injection]:
    """The parameters of `fn` that Dagster fills (`dsl.injection`), with what fills each; `resources` are the
    declared (parameter, resource key) pairs."""
    declared = dict(resources)
    hints = annotations_of(fn)
    found: dict[str, Injection] = {}
    for name in parameter_names(fn):
        injection = injection_for(name, hints.get(name, _NO_ANNOTATION), declared)
        if injection is not None:
            found[name] = injection
    return found


def key_parameters(fn: Callable[..., object], resources: tuple[tuple[str, str], ...] = ()) -> tuple[str, ...]:
    """The parameters of `fn` that are context keys: every named parameter that Dagster does not fill."""
    injected = injections(fn, resources)
    return tuple(name for name in parameter_names(fn) if name not in injected)


_NO_FIELDS: Mapping[str, object] = {}


def step_injections(step: Step) -> Mapping[str, Injection]:
    """What Dagster fills in a leaf step: a function step's parameters, or an agent step's `deps` callable's
    (empty for anything else); remembered on the step."""
    return remembered(step, "_flujo_injections", _NO_FIELDS, lambda: _step_injections(step))


def _step_injections(step: Step) -> dict[str, Injection]:
    if isinstance(step, FunctionStep):
        return injections(step.fn, step.resources)
    if isinstance(step, AgentStep) and step.deps is not None:
        return injections(step.deps, step.resources)
    return {}


def resource_keys(step: Step) -> frozenset[str]:
    """The Dagster resource keys a leaf step uses."""
    return frozenset(i.resource_key for i in step_injections(step).values() if i.resource_key is not None)


def template_fields(template: str) -> tuple[str, ...]:
    """Field names of a `str.format` template, in order, without repeats (`{a.b}` reads `a`)."""
    seen: dict[str, None] = {}
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name:
            root = field_name.split(".", 1)[0].split("[", 1)[0]
            seen.setdefault(root, None)
    return tuple(seen)


def _model_fields_are_keys(annotation: object, fields: Mapping[str, object]) -> tuple[str, ...] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        names = tuple(annotation.model_fields)
        if names and all(n in fields for n in names):
            return names
    return None


def resolve_keys(step: Step, fields: Mapping[str, object]) -> StepKeys:
    """Resolve the keys `step` reads and writes against the context's `fields` (remembered on the step for
    that `fields` object: big pipelines resolve each step once)."""
    return remembered(step, "_flujo_keys", fields, lambda: _resolve_keys(step, fields))


def prompt_keys(step: AgentStep) -> tuple[str, ...]:
    """The keys an agent step's prompt reads: its template's fields, or its callable's parameters."""
    return template_fields(step.prompt) if isinstance(step.prompt, str) else parameter_names(step.prompt)


def _unique(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for group in groups for k in group))


def _resolve_keys(step: Step, fields: Mapping[str, object]) -> StepKeys:
    if isinstance(step, FunctionStep):
        reads = step.input_keys if step.input_keys is not None else key_parameters(step.fn, step.resources)
        if step.output_keys is not None:
            return StepKeys(reads=reads, writes=step.output_keys, split=len(step.output_keys) != 1)
        if step.name in fields:
            return StepKeys(reads=reads, writes=(step.name,))
        model_keys = _model_fields_are_keys(return_annotation(step.fn), fields)
        if model_keys is not None:
            return StepKeys(reads=reads, writes=model_keys, split=True)
        return StepKeys(reads=reads, writes=None)
    if isinstance(step, AgentStep):
        deps = key_parameters(step.deps, step.resources) if step.deps is not None else ()
        return StepKeys(reads=_unique(prompt_keys(step), deps), writes=(step.output_key or step.name,))
    if isinstance(step, Approval):  # the shown keys pass through the gate (approved edits replace them)
        return StepKeys(reads=step.show, writes=step.show, split=True)
    raise TypeError(f"no key rule for step kind {type(step).__name__}")
