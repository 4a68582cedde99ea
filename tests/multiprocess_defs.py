"""The example pipeline built with the multiprocess executor: a reconstructable target for execute_job."""

from __future__ import annotations

from dagster import JobDefinition, multiprocess_executor

from definitions.digest import digest
from definitions.offline import offline_runtime
from flujo_dagster import build_definitions

defs = build_definitions(
    pipelines=[digest],
    resources={"agent_runtime": offline_runtime()},
    # forkserver with the code preloaded: each step process starts in well under a second instead of
    # re-importing dagster and the code location (docs/architecture.md, "What Dagster costs")
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.multiprocess_defs"]}}}
    ),
)


def digest_multiprocess_job() -> JobDefinition:
    """The digest job under the multiprocess executor."""
    return defs.resolve_job_def("digest")
