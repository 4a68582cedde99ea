"""A code location where a pipeline reads a plain Dagster asset as a context key and waits for another (`deps`),
loaded by a code server as the webserver loads one (tests/test_upstream.py reads its asset graph through GraphQL)."""

from __future__ import annotations

from dagster import AssetKey, Definitions, asset
from pydantic import BaseModel

from flujo_dagster import Pipeline, build_definitions, step


class Row(BaseModel):
    id: int


class Counted(BaseModel):
    rows: list[Row]
    count: int | None = None
    label: str | None = None


@asset(key=["warehouse", "rows"])
def rows() -> list[dict[str, int]]:
    return [{"id": 1}]


@asset(key=["raw", "load"])
def load() -> None:
    return None


@step
def count(rows: list[Row]) -> int:
    return len(rows)


@step
def label(count: int | None) -> str:
    return f"{count} rows"


counted = Pipeline(
    "counted",
    context=Counted,
    steps=count >> label,
    assets=["count", "label"],
    upstream={"rows": AssetKey(["warehouse", "rows"])},
    deps=["raw/load"],
    context_asset=True,  # the final context's asset shows every upstream edge too
)

upstream_defs = Definitions.merge(Definitions(assets=[rows, load]), build_definitions(pipelines=[counted]))
