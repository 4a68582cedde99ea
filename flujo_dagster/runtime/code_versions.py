"""Code versions: a hash of what determines a step's output, the same in every process.

An agent step's version covers its prompt template, the model it runs on, the model settings, the output type
(its JSON schema), the agent's tools (names and JSON schemas) and its instructions and system prompts, and the
source of its `deps` function; a function step's covers its function's source. A control-flow node's own version
covers its conditions and settings; its whole version adds its children's. Nothing here depends on object ids,
addresses or the order of sets: versions are stable across processes (docs/assets.md, "Staleness and code
versions")."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
import tokenize
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from pydantic import BaseModel, PydanticUserError
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.toolsets import FunctionToolset

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Loop, Map, Parallel
from flujo_dagster.dsl.flow import children
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step

__all__ = [
    "VERSION_LENGTH",
    "ModelIdOf",
    "callable_source",
    "combine",
    "node_version",
    "stable_json",
    "step_version",
]

ModelIdOf: TypeAlias = Callable[[AgentStep], "str | None"]
"""The `provider:model` an agent step runs on (`AgentRuntime.model_id_for`); default: the step's own."""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
VERSION_LENGTH = 16
"""Hex digits of a version (64 bits of a SHA-256)."""


def _scrub(text: str) -> str:
    """`text` without memory addresses (`<function f at 0x7f...>`), which differ between processes."""
    return _ADDRESS.sub("", text)


def _plain(value: object) -> object:
    """`value` as JSON-able data with a stable order: mappings sorted by key, sets sorted, models dumped;
    anything else by its type and address-free repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=stable_json)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"))
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return callable_source(value)
    return f"{type(value).__qualname__}:{_scrub(repr(value))}"


def stable_json(value: object) -> str:
    """`value` as compact JSON with sorted keys (see `_plain` for what is not JSON already)."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def combine(*parts: object) -> str:
    """The version of `parts`: the first `VERSION_LENGTH` hex digits of the SHA-256 of their stable JSON."""
    return hashlib.sha256(stable_json(list(parts)).encode()).hexdigest()[:VERSION_LENGTH]


def _code_digest(code: types.CodeType) -> str:
    """A hash of a code object's bytecode, constants (nested code objects included) and names."""
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else _scrub(repr(c)) for c in code.co_consts]
    return combine(code.co_code.hex(), consts, list(code.co_names))


def _bound_values(fn: object) -> list[object]:
    """The plain values (text, numbers) a function closes over or has as defaults: a prompt function made by a
    factory (`lambda topic: f"{style}: {topic}"`) changes with them though its source does not."""
    cells = [c.cell_contents for c in getattr(fn, "__closure__", None) or () if c.cell_contents is not fn]
    values = [*cells, *(getattr(fn, "__defaults__", None) or ())]
    return [v for v in values if v is None or isinstance(v, str | int | float | bool)]


def callable_source(fn: object) -> str:
    """What identifies `fn`'s behaviour: its source (and the plain values it closes over); without one (built
    in a REPL, by `exec`, a C function) its module, qualified name and bytecode hash. A callable object is its
    class's; a `functools.partial` its function's with its arguments."""
    if isinstance(fn, functools.partial):
        return stable_json(["partial", callable_source(fn.func), fn.args, fn.keywords])
    target = fn if inspect.isroutine(fn) or isinstance(fn, type) else type(fn)
    try:
        return _source_of(target)
    except TypeError:  # unhashable: not remembered
        return _source_of.__wrapped__(target)


@functools.lru_cache(maxsize=4096)
def _source_of(target: object) -> str:
    """`callable_source` of a function or class, remembered: a big pipeline's steps share their functions."""
    target = inspect.unwrap(target) if callable(target) else target
    bound = _bound_values(target)
    try:
        source = inspect.getsource(target)  # type: ignore[arg-type]
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):  # no source, or a file that is not its source
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
        code = getattr(target, "__code__", None)
        source = f"{module}.{name}:{_code_digest(code) if isinstance(code, types.CodeType) else ''}"
    return source if not bound else f"{source}\n# bound: {stable_json(bound)}"


def _instructions(agent: Agent[Any, Any]) -> list[object]:
    """The agent's instructions and system prompts: texts, and the sources of the functions that make them.
    pydantic-ai keeps them in private attributes (read leniently: an absent one is an empty list)."""
    found: list[object] = []
    for attr in ("_instructions", "_system_prompts", "_system_prompt_functions"):
        for item in getattr(agent, attr, None) or ():
            if isinstance(item, str):
                found.append([attr, item])
                continue
            inner = getattr(item, "instruction", None) or getattr(item, "function", None) or item
            found.append([attr, inner if isinstance(inner, str) else callable_source(inner)])
    return found


def _tools(agent: Agent[Any, Any]) -> list[object]:
    """Each tool of the agent's function toolsets as name, description and JSON schemas, by name; any other
    toolset (an MCP server, ...) by its class, since its tools are only known when it runs."""
    tools: list[object] = []
    for toolset in agent.toolsets:
        if isinstance(toolset, FunctionToolset):
            for name, tool in sorted(toolset.tools.items()):
                tools.append([name, tool.tool_def.description, tool.tool_def.parameters_json_schema])
        else:
            tools.append([type(toolset).__module__, type(toolset).__qualname__])
    return tools


def _schema(make: Callable[[], object], kind: object) -> object:
    """A JSON schema from `make`, or `kind`'s name when pydantic cannot make one (arbitrary types)."""
    try:
        return make()
    except (PydanticUserError, UserError, TypeError):  # no schema for it: the type's name still identifies it
        return _plain(kind)


def _agent_parts(step: AgentStep) -> object:
    """What an agent step's output depends on besides its prompt and model: the agent's model settings, output
    schema, tools and instructions. A non-pydantic-ai agent contributes its class."""
    agent = step.agent
    if not isinstance(agent, Agent):
        return [type(agent).__module__, type(agent).__qualname__]
    return {
        "agent_settings": agent.model_settings,
        "output": _schema(agent.output_json_schema, agent.output_type),
        "tools": _tools(agent),
        "instructions": _instructions(agent),
    }


def step_version(step: FunctionStep | AgentStep, model_id: ModelIdOf | None = None) -> str:
    """The code version of a function or agent step (see the module's docstring)."""
    if isinstance(step, FunctionStep):
        return combine("function", callable_source(step.fn))
    model = model_id(step) if model_id is not None else step.model_id()
    prompt = step.prompt if isinstance(step.prompt, str) else callable_source(step.prompt)
    deps = None if step.deps is None else callable_source(step.deps)
    return combine("agent", prompt, model, step.model_settings, _agent_parts(step), deps)


def _own(step: Step) -> list[object]:
    """What a node itself (not its children) decides: conditions and the settings that change what it writes."""
    if isinstance(step, Loop):
        return [callable_source(step.until), step.max_iterations, step.on_exhausted]
    if isinstance(step, Branch):
        on = step.on if isinstance(step.on, str) else callable_source(step.on)
        return [on, [_scrub(label) for label, _ in step.arms()]]
    if isinstance(step, Parallel):
        return [sorted(step.branches), step.on_branch_failure]
    if isinstance(step, Map):
        return [step.over, step.item, step.result, step.into]
    if isinstance(step, Approval):
        decision = None if step.decision is None else _schema(step.decision.model_json_schema, step.decision)
        return [list(step.show), decision]
    return []


def node_version(step: Step, model_id: ModelIdOf | None = None, *, whole: bool = True) -> str:
    """The code version of any node: a leaf's `step_version`; a control-flow node's (or approval gate's) own
    part, and with `whole` its children's versions too (an inline op runs them all)."""
    if isinstance(step, FunctionStep | AgentStep):
        return step_version(step, model_id)
    inner: list[object] = []
    if whole:
        inner = [[label, _sequence(steps, model_id)] for label, steps in children(step)]
    return combine(step.kind, step.name, _own(step), inner)


def _sequence(steps: Iterable[Step], model_id: ModelIdOf | None) -> list[object]:
    return [[s.name, node_version(s, model_id)] for s in steps]
