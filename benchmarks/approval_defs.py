"""The code location of benchmarks/approvals.py: write (agent) -> review (approval gate) -> polish (agent) ->
publish, once with a parking gate (`bench_park`), once with a waiting gate (`bench_wait`), and without the gate
(`bench_plain`, the baseline of the events one pause adds). The agents answer
from a scripted FunctionModel: nothing leaves the machine."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Approval, Pipeline, Price, agent_step, build_definitions, step


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A deterministic answer built from the prompt (the same input shows the gate the same payload)."""
    prompt = next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    return ModelResponse(parts=[TextPart(f"text for: {prompt}")])


class Note(BaseModel):
    topic: str
    draft: str = ""
    polished: str = ""
    published: str = ""


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft")
polish = agent_step("polish", agent=writer, prompt="Polish {draft}", output_key="polished")


@step(name="publish", output_keys=["published"])
def publish(polished: str) -> str:
    """The published text."""
    return f"published: {polished}"


bench_park = Pipeline("bench_park", context=Note, steps=[write, Approval("review", show=["draft"]), polish, publish])
bench_wait = Pipeline(
    "bench_wait", context=Note, steps=[write, Approval("review", show=["draft"], mode="wait"), polish, publish]
)
# the baseline of (c): the same steps without the gate (a decision is bound to the run it was made on, so no
# run can start with its gate already approved)
bench_plain = Pipeline("bench_plain", context=Note, steps=[write, polish, publish])
runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="bench"),
    prices={"function:bench": Price(input_per_mtok=0, output_per_mtok=0)},
)
defs = build_definitions(pipelines=[bench_park, bench_wait, bench_plain], resources={"agent_runtime": runtime})
