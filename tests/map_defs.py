"""A Map expanded with `inline=False` under the multiprocess executor: a reconstructable target for
`execute_job` (each step process imports this module and rebuilds the same job)."""

from __future__ import annotations

from pathlib import Path

from dagster import JobDefinition, multiprocess_executor
from pydantic import BaseModel, Field

from flujo_dagster import Pipeline, build_definitions, step
from flujo_dagster.dsl import Map


class Flagged(BaseModel):
    """`xs` and `flag` (a file path) are the inputs: element 3 fails while the file does not exist."""

    xs: list[int]
    flag: str
    x: int = 0
    y: int = 0
    ys: list[int] = Field(default_factory=list)


@step(name="check", output_keys=["y"])
def check(x: int, flag: str) -> int:
    if x == 3 and not Path(flag).exists():
        raise RuntimeError(f"element {x}: {flag} does not exist yet")
    return 2 * x


flagged = Pipeline(
    "map_flagged",
    context=Flagged,
    steps=[Map("each", over="xs", item="x", body=[check], result="y", into="ys", inline=False)],
)

defs = build_definitions(
    pipelines=[flagged],
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.map_defs"]}}}
    ),
)


def map_job() -> JobDefinition:
    """The flagged Map job under the multiprocess executor."""
    return defs.resolve_job_def("map_flagged")
