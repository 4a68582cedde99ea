"""The op that turns an upstream asset into a context key: its input is the graph input Dagster fills with the
upstream asset's value (loaded by that asset's own IO manager); it validates the value as the key's type and
emits it through the flujo IO manager, like any key."""

from collections.abc import Iterator
from typing import Any

from dagster import Any as DagsterAny
from dagster import Failure, In, OpDefinition, OpExecutionContext, Output
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from flujo_dagster import names
from flujo_dagster.adapter.ops.leaf import outs_for
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.names import UPSTREAM_INPUT, io_name
from flujo_dagster.runtime.values import adapter_for, coerce_value
from flujo_dagster.validation.typecompat import type_name

__all__ = ["upstream_op_def"]

_MAX_PROBLEMS = 5
_MAX_CHARS = 200


def _cut(text: str, limit: int = _MAX_CHARS) -> str:
    """`text` at most `limit` characters long (an upstream value's keys and messages are not ours to trust)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _problems(exc: ValidationError | PydanticSerializationError | ValueError) -> list[str]:
    """What is wrong with the loaded value, one bounded line per problem."""
    if not isinstance(exc, ValidationError):
        return [f"(value): {_cut(str(exc))} ({type(exc).__name__})"]
    errors = exc.errors(include_url=False, include_input=False)
    return [f"{_cut('.'.join(map(str, e['loc'])) or '(value)')}: {_cut(e['msg'])} ({e['type']})" for e in errors]


def _refused(
    pipeline: Pipeline, key: str, asset: str, exc: ValidationError | PydanticSerializationError | ValueError
) -> Failure:
    """The failure of a loaded value that is not of the key's type: pipeline, key, asset, what is wrong (bounded:
    at most `_MAX_PROBLEMS` problems of at most `_MAX_CHARS` characters each part)."""
    problems = _problems(exc)
    shown = "\n".join(f"  - {p}" for p in problems[:_MAX_PROBLEMS])
    more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
    return Failure(
        description=(
            f"pipeline {pipeline.name!r}: upstream key {key!r} reads asset {asset!r}, whose value is not a "
            f"{type_name(pipeline.fields[key])} ({len(problems)} problem(s)):\n{shown}{more}\n"
            f"Make asset {asset!r} produce values of that type, or change the type of {key!r} in "
            f"{pipeline.context.__name__}."
        ),
        metadata={names.KEY: key, names.ERROR_CLASS: type(exc).__name__},
        allow_retries=False,  # the same stored value fails the same way again
    )


def upstream_op_def(pipeline: Pipeline, key: str, name: str) -> OpDefinition:
    """The op of upstream key `key`: validates the value of its asset (its one input) as `pipeline.fields[key]`
    and emits it as the key; a value of another type fails the step naming pipeline, key and asset."""
    asset = "/".join(pipeline.upstream[key])
    adapter = adapter_for(pipeline.fields[key])

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        try:
            value = coerce_value(adapter, inputs[UPSTREAM_INPUT])
        except (ValidationError, PydanticSerializationError, ValueError) as exc:  # a value JSON cannot hold too
            raise _refused(pipeline, key, asset, exc) from exc
        yield Output(value, io_name(key), metadata={names.KEY: key})

    return OpDefinition(
        compute_fn=compute,
        name=name,
        ins={UPSTREAM_INPUT: In(DagsterAny, description=f"the value of asset {asset!r}")},
        outs=outs_for(pipeline, (key,)),
        description=f"Loads key {key!r} of pipeline {pipeline.name!r} from asset {asset!r}, validated as "
        f"{type_name(pipeline.fields[key])}.",
        tags=names.op_tags(names.OpKind.UPSTREAM),
    )
