"""A loop + branch pipeline, expanded into ops, under the multiprocess executor: a reconstructable target for
`execute_job` (each step process imports this module and rebuilds the same job)."""

from __future__ import annotations

from dagster import JobDefinition, multiprocess_executor
from pydantic import BaseModel

from flujo_dagster import Pipeline, build_definitions, step
from flujo_dagster.dsl import Branch, Loop


class Review(BaseModel):
    """`n` is the input; the loop grows `draft` until it is `n` long; the branch sets `verdict`."""

    n: int
    draft: str = ""
    verdict: str = "none"


@step
def draft(draft: str) -> str:
    return draft + "x"


@step(name="accept", output_keys=["verdict"])
def accept(draft: str) -> str:
    return f"accept:{draft}"


@step(name="reject", output_keys=["verdict"])
def reject(draft: str) -> str:
    return f"reject:{draft}"


def review_pipeline() -> Pipeline:
    """A loop (at most 3 iterations, exits when `draft` is `n` long), then a branch on the draft's parity.
    Small on purpose: every op is a process under this executor."""
    return Pipeline(
        "cf_review",
        context=Review,
        steps=[
            Loop("refine", body=[draft], until=lambda draft, n: len(draft) >= n, max_iterations=3),
            Branch("check", on=lambda draft: len(draft) % 2 == 0, cases={True: [accept], False: [reject]}),
        ],
        assets=["verdict"],
    )


review = review_pipeline()

defs = build_definitions(
    pipelines=[review],
    # forkserver with this module preloaded, as tests/multiprocess_defs.py does
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.control_flow_defs"]}}}
    ),
)


def review_multiprocess_job() -> JobDefinition:
    """The loop + branch job under the multiprocess executor."""
    return defs.resolve_job_def("cf_review")
