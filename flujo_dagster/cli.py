"""`flujo-dagster`: validate and run pipelines from the command line."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import ModuleType
from typing import NoReturn

import click
import uvicorn
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    JobDefinition,
    build_reconstructable_job,
    in_process_executor,
)
from pydantic import ValidationError

from flujo_dagster.adapter.compile.definitions import compile_all
from flujo_dagster.adapter.control.approvals import PendingApproval, decide, pending, prepare_decision, resume
from flujo_dagster.adapter.control.audit import audit_trail
from flujo_dagster.adapter.control.calls import render_call, run_calls
from flujo_dagster.adapter.control.costs import run_costs
from flujo_dagster.adapter.control.graphql import Webserver
from flujo_dagster.adapter.control.launch import resume_now
from flujo_dagster.adapter.control.routes import how_to_resume, route
from flujo_dagster.adapter.control.run_ids import resolve_run_id
from flujo_dagster.adapter.inbox.app import create_app
from flujo_dagster.adapter.run import load_final_context, run_pipeline
from flujo_dagster.adapter.storage.budgets import adopt_ledger
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.config import (
    DECISION_SECRET_ENV,
    dagster_home,
    decision_secret,
    inbox_gate_url,
    inbox_url,
    inbox_user_header,
    webserver_headers,
    webserver_url,
)
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ApprovalError, ConfigurationError, FlujoDagsterError, RunInputsError
from flujo_dagster.names import AGENT_RUNTIME_KEY, BUDGET_LEDGER_KEY, IO_MANAGER_KEY, PARKED_TAG, PRICE_BOOK_KEY
from flujo_dagster.pricing.prices import PriceBook
from flujo_dagster.runtime.approvals import Verdict
from flujo_dagster.runtime.tags import cut
from flujo_dagster.runtime.text import printable
from flujo_dagster.runtime.values import adapter_for, from_json
from flujo_dagster.validation import ValidationReport, validate

__all__ = ["main", "target_job"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_PARKED = 3
EXIT_INVALID = 4
_PATHS_SHOWN = 20  # step paths `calls` suggests when --step matches none


def _import(module_name: str) -> ModuleType:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise click.UsageError(f"cannot import module {module_name!r}: {exc}") from exc


def _pipelines(module: ModuleType, attr: str | None, target: str) -> list[Pipeline]:
    if attr is None:
        found = {id(v): v for v in vars(module).values() if isinstance(v, Pipeline)}
        if not found:
            raise click.UsageError(f"module {module.__name__!r} defines no Pipeline; name one as {target}:ATTR")
        return list(found.values())
    if not hasattr(module, attr):
        raise click.UsageError(f"module {module.__name__!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, Pipeline):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, Pipeline) for v in value):
        return list(value)
    raise click.UsageError(f"{target} is a {type(value).__name__}, not a flujo_dagster Pipeline")


def _split_target(target: str) -> tuple[str, str | None]:
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise click.UsageError(f"expected MODULE[:ATTR], got {target!r}")
    return module_name, attr or None


def _resources(module: ModuleType) -> Mapping[str, object]:
    for value in vars(module).values():
        if isinstance(value, Definitions):
            return dict(value.resources or {})
    return {}


def _parse_input(pipeline: Pipeline, text: str) -> tuple[str, object]:
    """`key=value`: the value as JSON when it is valid JSON for the key's type, else the text itself (so
    `topic=2024` stays a string for a `str` key and `max_sources=5` becomes a number for an `int` key)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.UsageError(f"--input takes key=value, got {text!r}")
    annotation = pipeline.fields.get(key)
    if annotation is None:
        return key, value  # unknown keys are reported by input validation, with the others
    try:
        from_json(adapter_for(annotation), value)
    except ValidationError:
        return key, value
    return key, json.loads(value)


def _exit_invalid(exc: ConfigurationError) -> NoReturn:
    click.echo(str(ValidationReport.of(exc.findings)) if exc.findings else str(exc))
    sys.exit(EXIT_INVALID)


def _report(module: ModuleType, pipelines: list[Pipeline]) -> ValidationReport:
    """What `build_definitions` finds in `pipelines` with the module's settings: the agent runtime and the price
    book of its `Definitions` (the book build_definitions made from its prices, pyproject and strictness)."""
    resources = _resources(module)
    runtime = resources.get(AGENT_RUNTIME_KEY)
    book = resources.get(PRICE_BOOK_KEY)
    return validate(
        pipelines,
        prices=book if isinstance(book, PriceBook) else None,
        runtime=runtime if isinstance(runtime, AgentRuntime) else None,
    )


@click.group()
def main() -> None:
    """flujo_dagster: typed AI-agent pipelines on Dagster."""


@main.command("validate")
@click.argument("target")
def validate_command(target: str) -> None:
    """Validate the pipelines in MODULE (or MODULE:ATTR). Exit 0 ok, 2 usage error, 4 findings with errors."""
    module_name, attr = _split_target(target)
    try:
        module = _import(module_name)
    except ConfigurationError as exc:
        _exit_invalid(exc)
    try:
        report = _report(module, _pipelines(module, attr, target))
    except ConfigurationError as exc:  # a pyproject pricing table that cannot be read
        _exit_invalid(exc)
    click.echo(str(report))
    sys.exit(EXIT_OK if report.ok else EXIT_INVALID)


@main.command("run")
@click.argument("target")
@click.option("--input", "inputs", multiple=True, help="key=value (value parsed as JSON when it can be)")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    help="Dagster console log level; a failed step is logged with Dagster's stack trace, CRITICAL leaves only "
    "this command's own lines (the run id, each agent step, the one-line failure).",
)
def run_command(target: str, inputs: tuple[str, ...], log_level: str) -> None:
    """Run the pipeline MODULE:ATTR in process on DAGSTER_HOME's instance and print the final context.

    Resources (the agent runtime, the IO manager) come from the module's Definitions when it has one.
    Exit 0 done, 1 the run failed, 2 usage error or bad inputs, 3 parked at an approval gate (the request
    and the commands to decide are printed), 4 invalid pipeline.
    """
    module_name, attr = _split_target(target)
    try:
        module = _import(module_name)
    except ConfigurationError as exc:
        _exit_invalid(exc)
    pipelines = _pipelines(module, attr, target)
    if len(pipelines) != 1:
        raise click.UsageError(f"{target} holds {len(pipelines)} pipelines; name one as MODULE:ATTR")
    values = dict(_parse_input(pipelines[0], i) for i in inputs)
    try:
        result = run_pipeline(pipelines[0], values, resources=_resources(module), log_level=log_level)
    except ConfigurationError as exc:
        _exit_invalid(exc)
    except RunInputsError as exc:
        click.echo(printable(str(exc)), err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"run id: {result.run_id}")
    for call in result.agent_calls:
        click.echo(f"agent step {call.render()}")
    if result.parked:
        _print_parked(result.run_id, result.parked, target)
        sys.exit(EXIT_PARKED)
    if not result.success:
        click.echo(printable(f"run failed: {result.error}"), err=True)
        sys.exit(EXIT_RUN_FAILED)
    click.echo(f"final context ({type(result.context).__name__}):")
    click.echo(printable(result.context.model_dump_json(indent=2)))


def _line(text: str) -> str:
    """`text` (from users, models or tags) as one line a terminal only displays: no control character."""
    return " ".join(printable(text).splitlines())


def _decide_commands(run_id: str, gate: str) -> list[str]:
    """The commands that decide gate `gate` of run `run_id`, ready to paste (the gate quoted for the shell)."""
    quoted = shlex.quote(gate) if "'" in gate else f"'{gate}'"
    return [
        f"flujo-dagster approve {run_id} --gate {quoted} --by NAME [--comment TEXT]",
        f"flujo-dagster reject {run_id} --gate {quoted} --by NAME --comment TEXT",
    ]


def _print_gate_footer(gate: PendingApproval, indent: str) -> None:
    """The state hash a decision is bound to, the reviewers' inbox page (when configured) and the commands."""
    click.echo(f"{indent}state (sha256 {_line(gate.state_hash)})")
    link = inbox_gate_url(gate.run_id, gate.gate)
    if link is not None:
        click.echo(f"{indent}inbox: {_line(link)}")
    click.echo(f"{indent}decide with:")
    for command in _decide_commands(_line(gate.run_id), _line(gate.gate)):
        click.echo(f"{indent}  {command}")


def _print_parked(run_id: str, parked: tuple[PendingApproval, ...], target: str) -> None:
    """What a run parked at approval gates waits for, readable: each gate's path, who may decide, the deadline,
    the payload's preview, the commands to decide, and how it resumes. What users or models wrote is printed
    without control characters."""
    click.echo(f"parked: run {run_id} waits at {len(parked)} approval gate(s); nothing failed")
    for gate in parked:
        who = ", ".join(gate.approvers) if gate.approvers is not None else "anyone"
        click.echo(f"\n{_line(gate.path)} (gate {_line(gate.gate)})")
        click.echo(f"  waiting for: {_line(gate.waiting_for)}")
        click.echo(f"  who may decide: {_line(who)}")
        click.echo(f"  deadline: {_line(gate.deadline or 'none')}")
        click.echo(f"  payload (sha256 {_line(gate.payload_hash)}):")
        for line in printable(gate.preview).splitlines():
            click.echo(f"    {line}")
        _print_gate_footer(gate, "  ")
    if dagster_home() is None:  # a temporary instance, gone with the run: it cannot be resumed
        click.echo("\nthe run was made in a temporary instance (DAGSTER_HOME is not set), so it cannot be resumed")
        return
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
    if run is not None:
        click.echo(f"\n{printable(how_to_resume(run, target))}")


def _full_run_id(instance: DagsterInstance, text: str) -> str:
    """The run id RUN_ID names: a full id or a unique prefix of one (the 8 characters the Dagster UI shows).
    Exits 2 saying why when none or several runs match."""
    try:
        return resolve_run_id(instance, text)
    except ApprovalError as exc:
        click.echo(printable(str(exc)), err=True)
        sys.exit(EXIT_USAGE)


@main.command("costs")
@click.argument("run_id")
def costs_command(run_id: str) -> None:
    """Print the cost and tokens of every agent step of RUN_ID (a full run id or a unique prefix) and its
    re-executions (DAGSTER_HOME's instance), then the total."""
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        try:
            calls = run_costs(run_id, instance=instance)
        except FlujoDagsterError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
    click.echo(f"{'run':<8}  {'step':<40}  {'model':<28}  {'tokens in/out':>14}  {'cost USD':>12}  price source")
    for call in calls:
        tokens = f"{call.input_tokens}/{call.output_tokens}"
        flags = ("  [usage unknown]" if call.usage_unknown else "") + ("  [step failed]" if call.status != "ok" else "")
        if call.cache_hits:
            flags += f"  [cache: {call.cache_hits} hit(s), saved ${call.saved_cost_usd:.6f}]"
        click.echo(
            _line(
                f"{call.run_id[:8]:<8}  {call.step_path:<40}  {call.model:<28}  {tokens:>14}  {call.cost_usd:>12.6f}  "
                f"{call.price_source or 'none'}{flags}"
            )
        )
    total = sum((c.cost_usd for c in calls), Decimal(0))
    tokens_in, tokens_out = sum(c.input_tokens for c in calls), sum(c.output_tokens for c in calls)
    click.echo(f"total: ${total:.6f}, {tokens_in} input / {tokens_out} output tokens, {len(calls)} agent step(s)")
    hits = sum(c.cache_hits for c in calls)
    if hits:
        saved = sum((c.saved_cost_usd for c in calls), Decimal(0))
        click.echo(f"call cache: {hits} request(s) served from the cache, ${saved:.6f} saved")
    unknown = [c.step_path for c in calls if c.usage_unknown]
    if unknown:
        click.echo(
            f"warning: {len(unknown)} step(s) got answers without usage ({', '.join(unknown)}): a budgeted one is "
            "charged at its reservation (the worst case), an unbudgeted one's cost is a lower bound",
            err=True,
        )


@main.command("calls")
@click.argument("run_id")
@click.option("--step", "step", default=None, help="Only this step path's calls (and those of the steps inside it).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def calls_command(run_id: str, step: str | None, as_json: bool) -> None:
    """Print the record of every agent call of RUN_ID (a full run id or a unique prefix) and its re-executions:
    messages, output, usage, model, latency, cache status and budget decision, redacted (docs/calls.md)."""
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        try:
            found = run_calls(run_id, instance=instance, step=step)
        except FlujoDagsterError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
    if as_json:
        click.echo(found.as_json())
    else:
        for call in found.calls:
            click.echo(printable("\n".join(render_call(call))))
        click.echo(f"{len(found.calls)} agent call(s)" + (f" of step {printable(step)!r}" if step else ""))
    for problem in found.problems:
        click.echo(f"warning: {printable(problem)}", err=True)
    if step and not found.calls and found.paths:
        more = ", ..." if len(found.paths) > _PATHS_SHOWN else ""
        shown = ", ".join(repr(p) for p in found.paths[:_PATHS_SHOWN]) + more
        click.echo(_line(f"no call of step {step!r}; --step takes a step path as printed, one of: {shown}"), err=True)


@main.command("pending")
def pending_command() -> None:
    """List the gates runs are parked at (DAGSTER_HOME's instance): what each waits for, the payload's preview,
    the state hash a decision is bound to, the reviewers' inbox page (FLUJO_DAGSTER_INBOX_URL) and the commands to
    decide. What users or models wrote is printed without control characters."""
    with DagsterInstance.get() as instance:
        waiting = pending(instance=instance, secret=decision_secret(), report=_report_line)
    for gate in waiting:
        if gate.problem:
            click.echo(_line(f"{gate.run_id}  {gate.gate}  NOT READABLE: {gate.problem}"))
            continue
        due = f"  deadline {gate.deadline}" if gate.deadline else ""
        click.echo(
            _line(
                f"{gate.run_id}  {gate.gate}  {gate.path}  payload {gate.payload_hash[:12]}  waiting for "
                f"{gate.waiting_for}{due}"
            )
        )
        for line in printable(gate.preview).splitlines():
            click.echo(f"    {line}")
        _print_gate_footer(gate, "    ")
    click.echo(f"{len(waiting)} pending approval(s)")


def _report_line(text: str) -> None:
    """A problem with one run, on stderr, without control characters."""
    click.echo(_line(text), err=True)


@main.command("audit")
@click.argument("run_id")
def audit_command(run_id: str) -> None:
    """The approval audit trail of RUN_ID's chain (the run, its resumes; a full run id or a unique prefix):
    requests, decisions, ignored decisions, timeouts, escalations and resumes."""
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        try:
            events = audit_trail(run_id, instance=instance)
        except FlujoDagsterError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
    for event in events:
        at = datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="seconds")
        click.echo(_line(f"{at}  {event.run_id[:8]}  {event.kind:<10}  {event.gate}  {event.message}"))
        for key, before, after in event.edits():  # JSON text: one line each
            click.echo(f"    {_line(key)}: {_line(before)} -> {_line(after)}")
    click.echo(f"{len(events)} audit event(s)")


def _decide(run_id: str, verdict: Verdict, gate: str | None, by: str, comment: str, values: dict[str, object]) -> None:
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        try:
            decision = decide(
                run_id,
                verdict=verdict,
                by=by,
                gate=gate,
                comment=comment,
                values=values,
                instance=instance,
                secret=decision_secret(),  # signs the decision when set
            )
        except ApprovalError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
        click.echo(
            _line(
                f"recorded: {decision.verdict} by {decision.by} on run {run_id} (payload {decision.payload_hash[:12]})"
            )
        )
        click.echo(_line(_resume_at_once(instance, run_id, f"flujo-dagster {verdict} by {cut(by, 80)}")))


def _resume_at_once(instance: DagsterInstance, run_id: str, resumed_by: str) -> str:
    """Launch the resume of decided run `run_id` now, through the webserver (the flujo_approvals sensor stays the
    fallback), and say what happened; a run parked outside a code location gets the command that resumes it."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return ""
    if route(run) == "in_process":
        return how_to_resume(run)
    try:
        server = Webserver(webserver_url(), headers=webserver_headers())
    except ConfigurationError as exc:
        return f"the resume was not launched now ({exc}); {how_to_resume(run)}"
    outcome = resume_now(
        instance, run_id, server=server, secret=decision_secret(), resumed_by=resumed_by, report=_report_line
    )
    return outcome.message


def _values(pairs: tuple[str, ...]) -> dict[str, object]:
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise click.UsageError(f"--set {pair!r}: expected key=value")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


@main.command("approve")
@click.argument("run_id")
@click.option("--gate", default=None, help="the gate (op name) when the run is parked at several")
@click.option("--by", required=True, help="who approves")
@click.option("--comment", default="")
@click.option("--set", "edits", multiple=True, help="key=value: an edited value of a shown key")
def approve_command(run_id: str, gate: str | None, by: str, comment: str, edits: tuple[str, ...]) -> None:
    """Approve the gate RUN_ID (a full run id or a unique prefix) is parked at, then launch its resume at once
    through the webserver (FLUJO_DAGSTER_WEBSERVER_URL; the flujo_approvals sensor is the fallback)."""
    _decide(run_id, "approve", gate, by, comment, _values(edits))


@main.command("sign")
@click.argument("run_id")
@click.option("--gate", default=None, help="the gate when the run is parked at several")
@click.option("--by", required=True, help="who decides")
@click.option("--verdict", type=click.Choice(["approve", "reject"]), required=True)
@click.option("--comment", default="")
@click.option("--set", "edits", multiple=True, help="key=value: an edited value of a shown key")
def sign_command(
    run_id: str, gate: str | None, by: str, verdict: Verdict, comment: str, edits: tuple[str, ...]
) -> None:
    """Print the `at` and `signature` of a signed decision, for the Launchpad's flujo_decide job (the secret is
    read from FLUJO_DAGSTER_DECISION_SECRET and never printed)."""
    secret = decision_secret()
    if secret is None:
        click.echo(f"set {DECISION_SECRET_ENV} to the approvers' secret to sign a decision", err=True)
        sys.exit(EXIT_USAGE)
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        try:
            _, _, decision = prepare_decision(
                run_id,
                verdict=verdict,
                by=by,
                gate=gate,
                comment=comment,
                values=_values(edits),
                instance=instance,
                secret=secret,
            )
        except ApprovalError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
    click.echo(f"at: {decision.at}\nsignature: {decision.signature}")


@main.command("reject")
@click.argument("run_id")
@click.option("--gate", default=None, help="the gate (op name) when the run is parked at several")
@click.option("--by", required=True, help="who rejects")
@click.option("--comment", required=True, help="why")
def reject_command(run_id: str, gate: str | None, by: str, comment: str) -> None:
    """Reject the gate RUN_ID (a full run id or a unique prefix) is parked at, then launch its resume at once
    through the webserver (FLUJO_DAGSTER_WEBSERVER_URL; the flujo_approvals sensor is the fallback)."""
    _decide(run_id, "reject", gate, by, comment, {})


def _one_pipeline(target: str) -> tuple[ModuleType, Pipeline]:
    module_name, attr = _split_target(target)
    module = _import(module_name)
    pipelines = _pipelines(module, attr, target)
    if len(pipelines) != 1:
        raise click.UsageError(f"{target} holds {len(pipelines)} pipelines; name one as MODULE:ATTR")
    return module, pipelines[0]


def target_job(target: str) -> JobDefinition:
    """The job `flujo-dagster run TARGET` runs (the pipeline MODULE:ATTR compiled with the module's resources), in
    process: what `flujo-dagster resume` hands to Dagster to re-execute (`build_reconstructable_job`)."""
    module, pipeline = _one_pipeline(target)
    (compiled,), chosen, _ = compile_all([pipeline], resources=_resources(module), executor=in_process_executor)
    defs = Definitions(
        assets=[compiled.assets] if compiled.assets is not None else [], jobs=[compiled.job], resources=chosen
    )
    return defs.resolve_job_def(compiled.job_name)


@main.command("resume")
@click.argument("run_id")
@click.argument("target")
def resume_command(run_id: str, target: str) -> None:
    """Resume decided parked run RUN_ID in process (DAGSTER_HOME's instance) and print the final context.

    TARGET is the MODULE:ATTR the run was made with (`flujo-dagster run TARGET`): Dagster records no code origin
    for a run executed in process, and tags anyone can edit never decide which code is imported. For runs parked
    outside a code location, which the flujo_approvals sensor cannot re-execute; usable for any. The resume runs
    with the parked run's config (its log level included)."""
    try:
        module, pipeline = _one_pipeline(target)
        job = target_job(target)
    except ConfigurationError as exc:
        _exit_invalid(exc)
    with DagsterInstance.get() as instance:
        run_id = _full_run_id(instance, run_id)
        run = instance.get_run_by_id(run_id)
        if run is None:
            click.echo(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})", err=True)
            sys.exit(EXIT_USAGE)
        if run.job_name != job.name:
            click.echo(f"run {run_id} is a run of job {run.job_name!r}, but {target} is job {job.name!r}", err=True)
            sys.exit(EXIT_USAGE)
        recon = build_reconstructable_job("flujo_dagster.cli", "target_job", reconstructable_args=(target,))
        try:
            resumed = resume(run_id, job=recon, instance=instance, by="flujo-dagster resume")
        except ApprovalError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
        _report_resumed(instance, module, pipeline, run_id, resumed)


def _report_resumed(
    instance: DagsterInstance, module: ModuleType, pipeline: Pipeline, run_id: str, resumed: str
) -> None:
    """Print what became of the resume `resumed` of `run_id`: parked again, failed, or its final context."""
    click.echo(f"resumed run {run_id} as {resumed}")
    run = instance.get_run_by_id(resumed)
    assert run is not None  # execute_job made it in this instance
    if run.tags.get(PARKED_TAG) == "true":
        gates = [p for p in pending(instance=instance, secret=decision_secret()) if p.run_id == resumed]
        click.echo(_line(f"run {resumed} parked again at {', '.join(g.gate for g in gates)}; {how_to_resume(run)}"))
        return
    if run.status != DagsterRunStatus.SUCCESS:
        click.echo(f"run {resumed} ended {run.status.value}; see flujo-dagster audit {resumed}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    io = _resources(module).get(IO_MANAGER_KEY)
    context = load_final_context(
        pipeline, resumed, instance=instance, io_manager=io if isinstance(io, PydanticJsonIOManager) else None
    )
    click.echo(f"final context ({type(context).__name__}):")
    click.echo(printable(context.model_dump_json(indent=2)))


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@main.command("inbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", default=3100, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--user-header",
    default=None,
    help="the header an auth proxy names the reviewer in (default: FLUJO_DAGSTER_INBOX_USER_HEADER; unset: names "
    "are typed and recorded as self-declared)",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="a host name the inbox answers to, besides the loopback names, --host and FLUJO_DAGSTER_INBOX_URL's host "
    "(other Host headers are refused: DNS rebinding)",
)
def inbox_command(host: str, port: int, user_header: str | None, allowed_hosts: tuple[str, ...]) -> None:
    """Serve the reviewers' inbox on DAGSTER_HOME's instance: every gate runs are parked at, each gate's payload
    and policy, and a form that records a decision and resumes the run at once through the Dagster webserver
    (FLUJO_DAGSTER_WEBSERVER_URL; the flujo_approvals sensor stays the fallback). See docs/approvals.md."""
    try:
        header = inbox_user_header(user_header)
        server = Webserver(webserver_url(), headers=webserver_headers())
        public = inbox_url()
    except ConfigurationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    if header is None and host not in _LOOPBACK:
        click.echo(
            f"warning: listening on {host} without --user-header: anyone who reaches the inbox can decide under "
            "any name (recorded as self-declared); put it behind an auth proxy and set the header",
            err=True,
        )
    with DagsterInstance.get() as instance:
        hosts = (host, *allowed_hosts)
        app = create_app(instance, server=server, user_header=header, public_url=public, hosts=hosts)
        uvicorn.run(app, host=host, port=port, server_header=False, log_level="info")


@main.group("ledger")
def ledger_group() -> None:
    """The budget ledger the instance (DAGSTER_HOME) charges."""


@ledger_group.command("adopt")
@click.argument("module", required=False)
def ledger_adopt_command(module: str | None) -> None:
    """Start counting budgets in the ledger as it is now: record its id in DAGSTER_HOME's instance.

    Runs refuse a ledger whose file or tables were deleted, replaced or restored (budgets would silently start
    again from $0). After restoring it is not possible, adopt the new ledger on purpose with this command. MODULE:
    the code location whose Definitions' budget_ledger resource is used (default: the instance's own ledger)."""
    resource = _resources(_import(module)).get(BUDGET_LEDGER_KEY) if module is not None else None
    with DagsterInstance.get() as instance:
        try:
            location, found, before = adopt_ledger(instance, resource)
        except FlujoDagsterError as exc:
            click.echo(printable(str(exc)), err=True)
            sys.exit(EXIT_USAGE)
    was = "nothing recorded before" if before is None else f"was {before}"
    click.echo(f"adopted the budget ledger at {location}: id {found} ({was})")
