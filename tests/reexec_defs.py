"""The example pipeline on a model that fails while a marker file exists and logs every request it answers.

Both paths come from environment variables so that a reconstructed job (a new process or a re-execution)
behaves the same way. A reconstructable target for execute_job.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import JobDefinition
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from definitions.digest import digest
from definitions.offline import scripted_answer
from flujo_dagster import AgentRuntime, Price, build_definitions

FREE = Price(input_per_mtok=0, output_per_mtok=0)

FAIL_MARKER = "FLUJO_TEST_FAIL_MARKER"
REQUEST_LOG = "FLUJO_TEST_REQUEST_LOG"


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    kind = "critique" if info.output_tools else "draft"
    if kind == "critique" and Path(os.environ[FAIL_MARKER]).exists():
        raise ConnectionError("provider unavailable (test marker present)")
    with open(os.environ[REQUEST_LOG], "a") as log:
        log.write(kind + "\n")
    return scripted_answer(messages, info)


defs = build_definitions(
    pipelines=[digest],
    resources={
        "agent_runtime": AgentRuntime(model=FunctionModel(_answer, model_name="flaky"), prices={"function:flaky": FREE})
    },
)


def flaky_digest_job() -> JobDefinition:
    """The digest job whose critique fails while the marker exists."""
    return defs.resolve_job_def("digest")
