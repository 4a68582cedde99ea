"""The example code location: `defs` for `dagster dev -w workspace.yaml`.

Agents run on a scripted offline model unless `FLUJO_DAGSTER_LIVE=1` is set, in which case they use their own
models (`openai:gpt-5-mini`, which needs `OPENAI_API_KEY`).
"""

from __future__ import annotations

import os

from dagster import AssetSpec, Definitions, JobDefinition, ScheduleDefinition

from definitions.digest import digest
from definitions.gated import gated
from definitions.offline import offline_runtime
from definitions.orders import CustomerDirectory, orders, orders_briefing
from definitions.review import review
from flujo_dagster import AgentRuntime, ApprovalSettings, FlujoDagsterTranslator, Pipeline, build_definitions

LIVE = os.environ.get("FLUJO_DAGSTER_LIVE") == "1"
agent_runtime = AgentRuntime() if LIVE else offline_runtime()

# Dagster OSS sets no `dagster/user` tag, so the requester of a run is unknown, and a gate with
# requester_may_approve=False (the default) would count no decision: this example location accepts that.
# Where the deployment sets dagster/user (Dagster+, an authenticating proxy), leave the setting out.
approvals = ApprovalSettings(allow_unknown_requester=True)


class ExampleTranslator(FlujoDagsterTranslator):
    """The example's asset specs: the orders briefing's assets are owned by the sales team."""

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpec:
        spec = super().get_asset_spec(pipeline, key)
        return spec.replace_attributes(owners=["team:sales"]) if pipeline.name == "orders_briefing" else spec


flujo_defs = build_definitions(
    pipelines=[digest, review, gated, orders_briefing],
    resources={"agent_runtime": agent_runtime, "approval_settings": approvals, "customers": CustomerDirectory()},
    translator=ExampleTranslator(),
)
# the plain asset the orders briefing reads is refreshed before the briefing's own schedule (06:00 UTC): a
# pipeline's job reads its upstream assets, it does not materialize them; stopped until switched on, like the rest
orders_schedule = ScheduleDefinition(name="orders_schedule", cron_schedule="30 5 * * *", target=[orders])
# the location: the flujo pipelines beside a plain Dagster asset that the orders briefing reads
defs = Definitions.merge(Definitions(assets=[orders], schedules=[orders_schedule]), flujo_defs)


def digest_job() -> JobDefinition:
    """The digest's job, resolved against `defs` (a reconstructable target for `execute_job`)."""
    return defs.resolve_job_def("digest")


def reviewed_digest_job() -> JobDefinition:
    """The reviewed digest's job, resolved against `defs`."""
    return defs.resolve_job_def("reviewed_digest")


def gated_digest_job() -> JobDefinition:
    """The signed-off digest's job (an approval gate in a loop), resolved against `defs`."""
    return defs.resolve_job_def("gated_digest")
