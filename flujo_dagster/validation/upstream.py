"""Rules for upstream assets read as context keys and non-data deps (UPSTREAM-*)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from pydantic import PydanticUserError
from pydantic.errors import PydanticSchemaGenerationError

from flujo_dagster.dsl.control import Map
from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.keys import resolve_keys
from flujo_dagster.dsl.pipeline import AssetKeyPath, Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep
from flujo_dagster.interfaces import PipelineNaming
from flujo_dagster.names import key_path
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.schedules import partition_input
from flujo_dagster.validation.typecompat import json_round_trip_problem, type_adapter, type_name

__all__ = ["rule_upstream", "rule_upstream_assets"]


def _shown(path: AssetKeyPath) -> str:
    return "/".join(path)


def _finding(pipeline: Pipeline, code: str, path: str, message: str, hint: str) -> Finding:
    return Finding(code=code, severity="error", pipeline=pipeline.name, path=path, message=message, hint=hint)


def _unvalidatable(annotation: object) -> str | None:
    """Why pydantic cannot validate a loaded value as `annotation` (no TypeAdapter, or no JSON schema), or None."""
    try:
        type_adapter(annotation).json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def _writers(pipeline: Pipeline) -> dict[str, list[str]]:
    """The paths of the steps that write each key: function and agent steps, a Map's `item` and `into`. An approval
    gate that shows a key (and may let a reviewer edit it) passes it on: it is no second source."""
    writers: dict[str, list[str]] = {}
    for path, s in walk(pipeline.steps, pipeline.name):
        if isinstance(s, Map):
            writes: tuple[str, ...] = (s.item, s.into)
        elif isinstance(s, FunctionStep | AgentStep):
            writes = tuple(resolve_keys(s, pipeline.fields).writes or ())
        else:
            continue
        for key in writes:
            writers.setdefault(key, []).append(path)
    return writers


def _key_findings(pipeline: Pipeline, key: str, written: dict[str, list[str]]) -> Iterator[Finding]:
    """UPSTREAM-001 to 004 for one upstream key."""
    asset, here = _shown(pipeline.upstream[key]), key_path(pipeline.name, key)
    if key not in pipeline.fields:
        match = difflib.get_close_matches(key, list(pipeline.fields), n=1)
        yield _finding(
            pipeline,
            "UPSTREAM-001",
            pipeline.name,
            f"upstream key {key!r} (asset {asset!r}) is not a field of {pipeline.context.__name__}.",
            f"did you mean {match[0]!r}?" if match else f"add a field {key!r} of the asset's type to the context",
        )
        return
    for path in written.get(key, ()):
        yield _finding(
            pipeline,
            "UPSTREAM-002",
            path,
            f"writes key {key!r}, which is read from upstream asset {asset!r}; a key has one source.",
            f"write another key in the step, or read {key!r} from the asset only",
        )
    if pipeline.has_default(key) or key == partition_input(pipeline):
        what = "is the partition key field" if key == partition_input(pipeline) else "has a default"
        yield _finding(
            pipeline,
            "UPSTREAM-003",
            here,
            f"key {key!r} is read from upstream asset {asset!r} but {what}, so a run's inputs could give it too.",
            f"remove the default of {key!r} (its value always comes from the asset)"
            if what == "has a default"
            else "read another key from the asset",
        )
    # a type that does not survive JSON is V-TYPE's finding already (every key is stored as JSON)
    problem = None if json_round_trip_problem(pipeline.fields[key]) else _unvalidatable(pipeline.fields[key])
    if problem is not None:
        yield _finding(
            pipeline,
            "UPSTREAM-004",
            here,
            f"key {key!r} ({type_name(pipeline.fields[key])}) is read from upstream asset {asset!r}, but pydantic "
            f"cannot validate a value as that type ({problem}).",
            "declare a type pydantic can validate and describe in JSON Schema (a model, list, dict, str, ...)",
        )


def rule_upstream(pipeline: Pipeline) -> Iterator[Finding]:
    """UPSTREAM-001: an upstream key is a field; UPSTREAM-002: no step writes it (an approval gate may show it);
    UPSTREAM-003: it is no run input (no default, not the partition key); UPSTREAM-004: pydantic can validate its
    type; UPSTREAM-005: a pipeline with upstream keys or deps declares assets."""
    if not pipeline.upstream and not pipeline.deps:
        return
    written = _writers(pipeline)
    for key in pipeline.upstream:
        yield from _key_findings(pipeline, key, written)
    if not pipeline.assets:
        yield _finding(
            pipeline,
            "UPSTREAM-005",
            pipeline.name,
            f"the pipeline reads {_read_list(pipeline)} but declares no asset: Dagster loads other assets only "
            "into assets (a job's op would not use the upstream asset's own IO manager).",
            "declare at least one asset (assets=[...]), or pass the value as a run input instead",
        )


def _read_list(pipeline: Pipeline) -> str:
    """What the pipeline reads from other assets, for a message: `upstream key 'orders' (asset 'shop/orders')`."""
    parts = [f"upstream key {k!r} (asset {_shown(p)!r})" for k, p in pipeline.upstream.items()]
    parts += [f"deps asset {_shown(p)!r}" for p in pipeline.deps]
    return ", ".join(parts)


def rule_upstream_assets(pipeline: Pipeline, naming: PipelineNaming) -> Iterator[Finding]:
    """UPSTREAM-006: each upstream or dep asset is named once, is none of the pipeline's own assets (a cycle),
    and no upstream key is itself in `assets=` (it is another asset already)."""
    sources = [(_shown(p), f"upstream key {k!r}") for k, p in pipeline.upstream.items()]
    sources += [(_shown(p), "deps") for p in pipeline.deps]
    own = {_shown(tuple(naming.get_asset_spec(pipeline, k).key.path)) for k in pipeline.assets if k in pipeline.fields}
    if pipeline.context_asset:
        own.add(_shown(tuple(naming.get_asset_spec(pipeline, None).key.path)))
    seen: dict[str, str] = {}
    for asset, where in sources:
        if asset in own:
            problem = f"{where} names asset {asset!r}, which this pipeline produces (a cycle)"
        elif asset in seen:
            problem = f"{where} names asset {asset!r}, which {seen[asset]} names too"
        else:
            seen[asset] = where
            continue
        yield _finding(pipeline, "UPSTREAM-006", pipeline.name, f"{problem}.", "name each other asset once")
    for key in pipeline.upstream:
        if key in pipeline.assets:
            yield _finding(
                pipeline,
                "UPSTREAM-006",
                key_path(pipeline.name, key),
                f"key {key!r} is read from upstream asset {_shown(pipeline.upstream[key])!r} and listed in assets=; "
                "it is that asset already.",
                f"leave {key!r} out of assets=[...]",
            )
