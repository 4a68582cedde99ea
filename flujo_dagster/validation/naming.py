"""Names the pipelines take in Dagster: V-NAME for asset keys Dagster cannot name outputs after, V-JOB for jobs
and graphs that would collide in one code location, SCHED-005 for schedule names Dagster refuses or that
collide."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.interfaces import PipelineNaming
from flujo_dagster.names import CONTEXT_OUTPUT, TYPE_CHECK, child_path, graph_name, io_name, key_path
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.names import check_identifier, is_dagster_name, is_identifier_name, storage_name_problem

__all__ = ["DEFAULT_NAMING", "DefaultNaming", "rule_asset_names", "rule_location", "schedule_name_for"]

_LEGAL = "Dagster names use only ASCII letters, digits and underscores"


@dataclass(frozen=True)
class _Key:
    path: tuple[str, ...]


@dataclass(frozen=True)
class _Spec:
    key: _Key


class DefaultNaming:
    """The names `FlujoDagsterTranslator` gives by default: job = pipeline name, asset key `[pipeline, key]`,
    the final context `[pipeline, "final_context"]` (a test keeps the two in step)."""

    def get_job_name(self, pipeline: Pipeline) -> str:
        """The pipeline's name."""
        return pipeline.name

    def get_asset_key(self, pipeline: Pipeline, key: str) -> _Key:
        """`[pipeline, key]`."""
        return _Key((pipeline.name, key))

    def get_context_asset_key(self, pipeline: Pipeline) -> _Key:
        """`[pipeline, "final_context"]`."""
        return _Key((pipeline.name, CONTEXT_OUTPUT))

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> _Spec:
        """A spec with the key `get_asset_key` gives (`key` None: `get_context_asset_key`)."""
        return _Spec(self.get_asset_key(pipeline, key) if key is not None else self.get_context_asset_key(pipeline))


DEFAULT_NAMING = DefaultNaming()


def schedule_name_for(pipeline: Pipeline, job_name: str) -> str | None:
    """The name of the pipeline's schedule: `Schedule(name=...)`, else `<job name>_schedule` (None: no schedule)."""
    if pipeline.schedule is None:
        return None
    return pipeline.schedule.name or f"{job_name}_schedule"


_UNSAFE_HINT = (
    "return asset key parts of at most 100 characters without '/', '\\' or control characters, other than '.' "
    "and '..', from the translator (each asset's latest value is stored in a file named after its key)"
)


def _unsafe_part(asset_key: Sequence[str]) -> str | None:
    """Why a part of `asset_key` cannot name a stored file or folder, naming the part; None when every part can."""
    for part in asset_key:
        problem = storage_name_problem(part)
        if problem is not None:
            return f"part {part!r}: {problem}"
    return None


def rule_asset_names(pipeline: Pipeline, naming: PipelineNaming) -> Iterator[Finding]:
    """V-NAME: every asset gets the `flujo_type` check, whose output Dagster names after the asset key, so each
    asset key must make a legal Dagster name; no key may take the final context's output name; and every part of
    an asset key must name a stored file (no `..`, `/`, control characters; see `storage_name_problem`)."""
    if not is_dagster_name(pipeline.name):
        return  # V-NAME refuses the pipeline's name itself
    keys = [k for k in dict.fromkeys(pipeline.assets) if k in pipeline.fields]
    for key in keys:
        path = key_path(pipeline.name, key)
        asset_key = list(naming.get_asset_spec(pipeline, key).key.path)
        output = check_identifier(asset_key, TYPE_CHECK)
        unsafe = _unsafe_part(asset_key)
        if unsafe is not None:
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"the asset key {asset_key} of key {key!r} cannot name a stored file: {unsafe}.",
                hint=_UNSAFE_HINT,
            )
        elif io_name(key) == CONTEXT_OUTPUT:
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"key {key!r} cannot be an asset: the final context's output (flujo_context's) has that name.",
                hint="rename the context field, or leave it out of assets=",
            )
        elif not is_identifier_name(output):
            yield Finding(
                code="V-NAME",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"key {key!r} cannot be an asset: Dagster names its checks' outputs after the asset key "
                f"({output!r}), and {_LEGAL}.",
                hint="rename the context field (letters, digits and underscores), or leave it out of assets=",
            )
    if not pipeline.context_asset:
        return
    context_key = list(naming.get_asset_spec(pipeline, None).key.path)
    unsafe = _unsafe_part(context_key)
    if unsafe is not None:
        yield Finding(
            code="V-NAME",
            severity="error",
            pipeline=pipeline.name,
            path=pipeline.name,
            message=f"the final context's asset key {context_key} cannot name a stored file: {unsafe}.",
            hint=_UNSAFE_HINT,
        )
    elif (pipeline.assets or pipeline.checks) and not is_identifier_name(check_identifier(context_key, TYPE_CHECK)):
        yield Finding(
            code="V-NAME",
            severity="error",
            pipeline=pipeline.name,
            path=pipeline.name,
            message=f"the final context's asset key {context_key} cannot name Dagster outputs: {_LEGAL}.",
            hint="return an asset key of letters, digits and underscores from get_asset_spec(pipeline, None)",
        )


def _graphs(pipeline: Pipeline, job: str) -> tuple[str, ...]:
    """The graph definitions the pipeline adds: its graph, and for an asset job the job's own graph."""
    own = graph_name(pipeline.name, bool(pipeline.assets))
    return (own, job) if pipeline.assets else (own,)


def _job_findings(pipeline: Pipeline, job: str, jobs: dict[str, str], graphs: dict[str, str]) -> Iterator[Finding]:
    problem, hint = None, "give each pipeline a unique name"
    if job != pipeline.name and (not is_dagster_name(job) or job.startswith("flujo_")):
        problem = f"its job name {job!r} is not a legal job name: {_LEGAL}, and names starting 'flujo_' are reserved"
        hint = "return a legal name from the translator's get_job_name"
    elif job in jobs:
        problem = (
            f"another pipeline is named {job!r} too"
            if jobs[job] == pipeline.name == job
            else f"pipeline {jobs[job]!r} compiles to job {job!r} too"
        )
    else:
        clash = next((g for g in _graphs(pipeline, job) if g in graphs), None)
        if clash is not None:
            problem = (
                f"it defines graph {clash!r}, which pipeline {graphs[clash]!r} defines too (an asset pipeline's "
                "graph is named '<pipeline>_graph', and an asset job's graph after the job)"
            )
    if problem is not None:
        yield Finding(
            code="V-JOB",
            severity="error",
            pipeline=pipeline.name,
            path=pipeline.name,
            message=f"pipeline {pipeline.name!r} cannot join this code location: {problem}.",
            hint=hint,
        )


def _schedule_findings(pipeline: Pipeline, name: str, schedules: dict[str, str]) -> Iterator[Finding]:
    path = child_path(pipeline.name, "schedule")
    if not is_dagster_name(name):
        message = f"the schedule's name {name!r} is not a legal Dagster name: {_LEGAL}."
    elif name in schedules:
        message = f"pipeline {schedules[name]!r} already has a schedule named {name!r}."
    else:
        return
    yield Finding(
        code="SCHED-005",
        severity="error",
        pipeline=pipeline.name,
        path=path,
        message=message,
        hint="give the schedule a unique name of letters, digits and underscores (Schedule(name=...))",
    )


def rule_location(pipelines: Sequence[Pipeline], naming: PipelineNaming) -> Iterator[Finding]:
    """V-JOB and SCHED-005 over the pipelines of one code location: a job, graph or schedule name that Dagster
    refuses or that an earlier pipeline already takes (the later pipeline gets the finding)."""
    jobs: dict[str, str] = {}
    graphs: dict[str, str] = {}
    schedules: dict[str, str] = {}
    for pipeline in pipelines:
        job = naming.get_job_name(pipeline)
        found = list(_job_findings(pipeline, job, jobs, graphs))
        yield from found
        if not found:
            jobs[job] = pipeline.name
            graphs.update(dict.fromkeys(_graphs(pipeline, job), pipeline.name))
        scheduled = schedule_name_for(pipeline, job)
        if scheduled is not None:
            scheduled_findings = list(_schedule_findings(pipeline, scheduled, schedules))
            yield from scheduled_findings
            if not scheduled_findings:
                schedules[scheduled] = pipeline.name
