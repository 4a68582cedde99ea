"""A code location for tests/test_cancellation.py: pipeline `held`, whose middle step waits while a hold file
exists, so a test can terminate its run mid-step. Each step call appends a line to `calls.txt` in the folder named
by `FLUJO_TEST_MARKERS` (the run happens in `dagster dev`'s run worker, another process)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel

from flujo_dagster import Pipeline, build_definitions, step

MARKERS_ENV = "FLUJO_TEST_MARKERS"


def markers() -> Path:
    """The folder of the hold file and the calls file."""
    return Path(os.environ[MARKERS_ENV])


def _called(what: str) -> None:
    with (markers() / "calls.txt").open("a") as calls:
        calls.write(f"{what}\n")


class Held(BaseModel):
    topic: str
    first: str = ""
    middle: str = ""
    last: str = ""


@step
def first(topic: str) -> str:
    _called("first")
    return topic.upper()


@step
def middle(first: str) -> str:
    (markers() / "worker.pid").write_text(str(os.getpid()))  # the run worker: the in-process executor
    _called("middle started")
    while (markers() / "hold").exists():  # held until the run is terminated (or the file removed)
        time.sleep(0.05)
    _called("middle finished")
    return f"{first}!"


@step
def last(middle: str) -> str:
    _called("last")
    return f"{middle}?"


held = Pipeline("held", context=Held, steps=[first, middle, last])
defs = build_definitions(pipelines=[held])


def held_job() -> JobDefinition:
    """The job, for `reconstructable`."""
    return defs.resolve_job_def("held")
