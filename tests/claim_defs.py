"""A reconstructable target for tests/test_cache.py's killed-claimant test: pipeline `claims`, one expanded agent
step whose model fails while the file `fail` exists in the folder `FLUJO_TEST_CLAIMS` names, and a call cache that
keeps a claim when its holder fails while the file `killed` exists there (what a process killed mid-request
leaves behind: it never gets to release). Completed requests are appended to `requests.txt` there."""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import Cache, Pipeline, agent_step, build_definitions
from flujo_dagster.adapter.storage.call_cache_sql import SqliteCallCache

CLAIMS_ENV = "FLUJO_TEST_CLAIMS"
LEASE = timedelta(seconds=20)


def folder() -> Path:
    """The folder of the marker files, the request log and the cache database."""
    return Path(os.environ[CLAIMS_ENV])


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if (folder() / "fail").exists():
        raise RuntimeError("the provider is down")
    with (folder() / "requests.txt").open("a") as log:
        log.write("asked\n")
    return ModelResponse(parts=[TextPart("an answer")])


class Kept(SqliteCallCache):
    """A call cache whose claims outlive a failed holder while `killed` exists (the holder was killed)."""

    def release(self, key: str, *, owner: str) -> None:
        if not (folder() / "killed").exists():
            super().release(key, owner=owner)


class Claims(BaseModel):
    topic: str = "owls"
    answer: str = ""


ask = agent_step(
    "ask", agent=Agent(FunctionModel(_answer, model_name="claims")), prompt="About {topic}", output_key="answer"
)
claims = Pipeline("claims", context=Claims, steps=[ask], cache=Cache(lease=LEASE))


def claims_job() -> JobDefinition:
    """`claims` on the multiprocess executor, its call cache in `folder()` (built on first use: the folder is
    named by the environment of the process)."""
    return _job()


@functools.cache
def _job() -> JobDefinition:
    resources = {
        "call_cache": Kept(folder() / "cache.sqlite"),
    }
    return build_definitions(pipelines=[claims], resources=resources).resolve_job_def("claims")
