"""The code location `make deploy-smoke` serves (tests/deploy_smoke.py): the digest, reviewed and gated examples,
a budgeted `Map` with one op per element over 32 items, and `kill_probe`, whose middle request blocks until the
smoke has killed the Celery worker running it; every job on dagster-celery's `celery_executor`.

Everything here is read from the environment the smoke gives each process that loads the location (webserver,
daemon, run workers, Celery workers), so that they all build the same jobs:

- `FLUJO_DEPLOY_DIR`: the directory every worker shares: the IO manager's storage (`io/`), the log of completed
  model requests (`requests.log`), the blocked request's process id (`blocked.pid`) and the file that releases it
  (`release`);
- `FLUJO_DEPLOY_BROKER`, `FLUJO_DEPLOY_BACKEND`: the Celery broker and result backend.

The fakes enter through resources: one scripted `FunctionModel` (the offline examples' answers, logging each request
it completes) as the `agent_runtime`, and the IO manager on the shared directory.
"""

from __future__ import annotations

import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from dagster import Definitions
from dagster_celery import celery_executor
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from definitions.digest import digest
from definitions.gated import gated
from definitions.offline import scripted_answer
from definitions.review import review
from flujo_dagster import AgentRuntime, ApprovalSettings, Budget, Pipeline, Price, agent_step, build_definitions
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.dsl import Map

SHARED = Path(os.environ.get("FLUJO_DEPLOY_DIR") or Path(tempfile.gettempdir()) / "flujo_deploy")
BROKER = os.environ.get("FLUJO_DEPLOY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("FLUJO_DEPLOY_BACKEND", "rpc://")
CELERY_SETTINGS: dict[str, object] = {"task_track_started": True, "result_expires": 3600}
"""What the executor and the workers both set: a task records STARTED when a worker begins it (what the smoke reads
for the killed step), and its result expires from the backend after an hour."""

MODEL_NAME = "deploy"
PRICE = Price(input_per_mtok=0, output_per_mtok=1_000)
"""$0.001 per output token, nothing per input token: a request with max_tokens=200 reserves exactly $0.20."""
MAX_TOKENS = 200
ITEMS = 32
MAP_BUDGET_USD = Decimal("0.20") * ITEMS  # every element's worst case, reserved together, fits exactly
PROBE_BUDGET_USD = Decimal("1")
BLOCK = "BLOCK-UNTIL-RELEASED"
BLOCK_TIMEOUT_S = 180.0

REQUESTS = "requests.log"
BLOCKED_PID = "blocked.pid"
RELEASE = "release"


def _prompt(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        for part in getattr(message, "parts", ()):
            if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                return part.content
    return ""


def _block() -> None:
    """Write this process's id for the smoke, then wait until it releases the request (never, in the run whose
    worker it kills)."""
    release = SHARED / RELEASE
    if release.exists():
        return
    (SHARED / BLOCKED_PID).write_text(str(os.getpid()))
    deadline = time.monotonic() + BLOCK_TIMEOUT_S
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {BLOCK_TIMEOUT_S} s")
        time.sleep(0.1)


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The offline examples' scripted answers; `item N` and the probe's prompts get a short text with a known
    usage. Each completed request appends its prompt's first line to the shared request log."""
    prompt = _prompt(messages)
    if BLOCK in prompt:
        _block()
    if prompt.startswith(("item ", "probe ")):
        response = ModelResponse(
            parts=[TextPart(f"answer to {prompt.splitlines()[0]}")],
            usage=RequestUsage(input_tokens=10, output_tokens=50 + len(prompt) % 100),
            model_name=MODEL_NAME,
        )
    else:
        response = scripted_answer(messages, info)
    with (SHARED / REQUESTS).open("a") as log:  # one short line per write: appends do not interleave
        log.write(f"{os.getpid()}\t{prompt.splitlines()[0] if prompt else ''}\n")
    return response


class Fan(BaseModel):
    """The Map's context: 32 items, each answered by the agent in its own op."""

    items: list[str] = Field(default_factory=lambda: [str(i) for i in range(ITEMS)])
    item: str = ""
    answer: str = ""
    answers: list[str] = Field(default_factory=list)


class Probe(BaseModel):
    """The worker-kill probe's context: three requests in a row; the middle one blocks in the first run."""

    topic: str
    first: str | None = None
    middle: str | None = None
    last: str | None = None


agent = Agent("openai:gpt-5-mini", defer_model_check=True)
settings = {"max_tokens": MAX_TOKENS}
ask = agent_step("ask", agent=agent, prompt="item {item}", output_key="answer", model_settings=settings)
fan = Pipeline(
    "fan32",
    context=Fan,
    steps=[Map("each", over="items", item="item", body=[ask], result="answer", into="answers", inline=False)],
    budget=Budget(max_cost_usd=MAP_BUDGET_USD),
)
probe = Pipeline(
    "kill_probe",
    context=Probe,
    steps=[
        agent_step("first", agent=agent, prompt="probe first {topic}", model_settings=settings),
        agent_step("middle", agent=agent, prompt="probe middle {first} " + BLOCK, model_settings=settings),
        agent_step("last", agent=agent, prompt="probe last {middle}", model_settings=settings),
    ],
    budget=Budget(max_cost_usd=PROBE_BUDGET_USD),
)
executor = celery_executor.configured({"broker": BROKER, "backend": BACKEND, "config_source": CELERY_SETTINGS})
runtime = AgentRuntime(model=FunctionModel(answer, model_name=MODEL_NAME), prices={f"function:{MODEL_NAME}": PRICE})
io_manager = PydanticJsonIOManager(base_dir=str(SHARED / "io"))
defs: Definitions = build_definitions(
    pipelines=[digest, review, gated, fan, probe],
    resources={
        "agent_runtime": runtime,
        "flujo_io_manager": io_manager,
        # Dagster OSS sets no dagster/user tag: the example gate accepts an unknown requester (definitions/)
        "approval_settings": ApprovalSettings(allow_unknown_requester=True),
    },
    executor=executor,
)
