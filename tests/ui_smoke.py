"""`make ui-smoke`: the Dagster UI and the reviewers' inbox as a user sees them, in headless Chromium, with the
example code location.

Boots `dagster dev` on 127.0.0.1 with a temporary workspace file: the example location of `workspace.yaml`, plus the
small `prompt_change` location of view 15 (tests/dagster_dev.py: a temporary DAGSTER_HOME, a free port,
the approvals sensor aimed at it, `FLUJO_DAGSTER_INBOX_URL` naming the inbox below, the whole process group stopped
at the end), materializes the `digest` example's assets and launches `gated_digest` so that its run parks at the
first approval gate (both through GraphQL, as the Launchpad does), then starts `flujo-dagster inbox` on the same
DAGSTER_HOME (local mode: reviewers type their name, recorded as self-declared; resumes launched through this
`dagster dev`'s webserver), drives Debian's Chromium (`/usr/bin/chromium`, through Playwright; no browser is
downloaded) to each page below, waits until the page has rendered the names a user would look for (read from the
page's text once rendered), and saves a screenshot of it under docs/screenshots/:

1. `asset-graph.png`: the `digest` asset group's lineage graph, every asset materialized;
2. `asset-materialization.png`: the `digest/report` asset, its latest materialization linking to the run above;
3. `parked-runs.png`: the Runs page filtered by the tag `flujo/parked=true`: the gated run (Success: a park is
   not a failure), not the digest's, with its `flujo/inbox/<gate>` tag;
4. `parked-run.png`: the parked `gated_digest` run, its log filtered to the gate step: the request, readable, with
   no failure and no traceback;
5. `approval-request.png`: that request opened in full: the gate's path, what it waits for, who may decide, the
   deadline, the payload (the round's draft) and its hash, and the commands to decide;
6. `approval-payload.png`: the payload shown to the reviewer, rendered as Markdown;
   (then the run's "View tags and config": the tag `flujo/inbox/<gate>` holds the gate's inbox page; no screenshot)
7. `parked-assets.png`: the `gated_digest` asset group: `sources`, made before the gate, materialized; `report`
   and the final context, after it, not failed;
8. `inbox.png`: the inbox's list of pending gates: the parked gate, its path, policy and payload;
9. `inbox-gate.png`: the gate's page (whole), its decision form filled in: a typed name, the draft edited, a comment;
10. `inbox-decided.png`: the page after Approve: the decision recorded and the resume launched at once;
11. `upstream-lineage.png`: the `orders_briefing/totals` asset's upstream lineage: the plain Dagster asset `orders`
    it reads, materialized first;
12. `launchpad-typed-inputs.png`: the `orders_briefing` job's Launchpad: its typed inputs, `top` filled with its
    default (3), `team` reported missing (required), then scaffolded;
13. `cache-hits.png`: `digest/draft` after the digest was materialized again with the same inputs (launched once
    views 1-7, which show the first run's materializations, are done; views 13-15 come last): its latest
    materialization is that run's, with `flujo/cache_hits` 1, the saved cost, `flujo/requests` 0 and $0, its call
    records linked; the run's agent steps made no model request (their step output metadata, read through the
    instance);
14. `subset-run.png`: a run of `digest/report` alone (launched beside it, as the UI's "Materialize selected"
    does): succeeded, its gantt chart shows `flujo_inputs`, `critique`, `report` and `flujo_context` and no
    `sources` or `draft` (loaded), which did not start (the run's events);
15. `stale-assets.png`: a second code location, `prompt_change` (a module written to the temporary directory and
    loaded beside the examples by a workspace file there: `note`, an agent step's asset, and `headline`, made from
    it), materialized, then its prompt changed and the location reloaded through GraphQL
    (`reloadRepositoryLocation`, as "Reload definitions" does): both assets "Unsynced", each "has a new code
    version", the note's cause open.
16. `fused-inline-op.png`: a `reviewed_digest` run's log filtered to its inline `Parallel` `extras`: one output,
    `flujo_keys`, for the two keys its branches write (`title`, `tags`), its metadata the per-step table
    (the run's events: that op yields no other output).

Then the resumed run (tagged `flujo/resumed_by=inbox: <name>`, launched by the inbox, not the sensor) parks at the
second round's gate (one source matches "python": the offline critic asks for another round), decided the same
way in the inbox without screenshots, and its resume succeeds: the final context holds the second edited draft, and
`gated_digest/report`'s latest materialization carries both approval records (`flujo/approvals`: the reviewer,
`edited: ["draft"]`).

A page that does not show what it should, or a run that does not get where expected, fails the smoke with the page,
its URL, the missing text and what the page showed instead (and a screenshot of it in the temporary directory). Not
collected by pytest; run it as `python -m tests.ui_smoke [--out DIR] [--chromium PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from dagster import AssetKey, DagsterEventType, DagsterRun, DagsterRunStatus
from playwright.sync_api import BrowserContext, Page, ViewportSize, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from definitions.gated import gated
from flujo_dagster import load_final_context
from flujo_dagster.config import INBOX_URL_ENV, INBOX_USER_HEADER_ENV, WEBSERVER_URL_ENV
from flujo_dagster.names import (
    APPROVALS,
    BUNDLE_OUTPUT,
    CACHE_HITS,
    CALL_RECORDS,
    COST_USD,
    REQUESTS,
    RESUMED_BY_TAG,
    SAVED_COST_USD,
    STEPS_JSON,
    TOTAL_COST_USD,
    inbox_tag,
)
from tests.dagster_dev import DagsterDev, DagsterDevError, dagster_dev, group_members, leftovers
from tests.test_webserver import ROOT, _free_port, _stop

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # headless as root on a closed network: no sandbox, GPU, QUIC, or background connections
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}
PAGE_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0

DIGEST_INPUTS = {"ops": {"digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}}
GATED_INPUTS = {"ops": {"gated_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "python"}}}}}}}
DIGEST_ASSETS = ["sources", "draft", "report"]  # the final context is no asset (no context_asset=True)
DIGEST_AGENT_STEPS = ["digest_graph.draft", "digest_graph.critique"]
# the last asset alone: `draft` is loaded; `critique` (no asset) runs again for it, `flujo_inputs` and
# `flujo_context` run for every subset that loads a value or selects the last asset (docs/assets.md)
SUBSET_STEPS = {f"digest_graph.{op}" for op in ("flujo_inputs", "critique", "report", "flujo_context")}
BRIEFING_INPUTS = {
    "ops": {"orders_briefing_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"team": "EMEA sales"}}}}}}
}
GATE = "revise__i1__sign_off"
GATE_PATH = "gated_digest > loop:revise > i1 > approval:sign_off"
GATE_STEP = f"gated_digest_graph.{GATE}"
GATES = [GATE, "revise__i2__sign_off"]  # one source matches "python": the offline critic asks for a second round
REVIEWER = "Ana Lima"
EDITS = [
    "Signed off in the inbox: this week in python, one source.\n- Event loops and worker threads",
    "Signed off in the inbox, round 2: one source stood out.\n- Event loops and worker threads",
]
COMMENTS = ["Tightened the opening line.", "Good enough with one source."]
FLUJO_DAGSTER = Path(sys.executable).parent / "flujo-dagster"
# a second code location, written to the temporary directory, whose prompt the smoke changes (then reloads it)
PROMPT_LOCATION = "prompt_change"
PROMPT_MODULE = '''"""A pipeline whose prompt `make ui-smoke` changes: `note` (the agent's), `headline` (from it)."""

from dagster import Definitions
from pydantic import BaseModel

from definitions.digest import writer
from definitions.offline import offline_runtime
from flujo_dagster import Pipeline, agent_step, build_definitions, step


class Note(BaseModel):
    topic: str
    note: str | None = None
    headline: str | None = None


@step
def headline(note: str | None) -> str:
    return (note or "").splitlines()[0] if note else "(no note)"


note = agent_step("note", agent=writer, prompt=PROMPT)
pipeline = Pipeline("prompt_change", context=Note, steps=note >> headline, assets=["note", "headline"])
built = build_definitions(pipelines=[pipeline], resources={"agent_runtime": offline_runtime()})
# its assets and job only: the example location's sensors serve every run already
defs = Definitions(assets=list(built.assets or []), jobs=list(built.jobs or []), resources=built.resources)
'''
PROMPTS = ["Write a note about {topic}.", "Write a short note about {topic}, for the team."]
PROMPT_INPUTS = {"ops": {"prompt_change_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}}
RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus locationOrLoadError { __typename } }
    ... on PythonError { message }
  }
}
"""


class UiSmokeError(RuntimeError):
    """A page did not show what a user should see, or the runs behind it did not get where expected."""


def _text(page: Page, selector: str) -> str:
    """The rendered text of the last element matching `selector` (the topmost dialog, say); "" if none."""
    with suppress(PlaywrightError):
        return page.locator(selector).last.inner_text(timeout=1000)
    return ""


def expect_texts(page: Page, name: str, texts: Sequence[str], *, within: str = "body") -> None:
    """Wait until the rendered text of the last element matching `within` on `page` contains every one of
    `texts`; otherwise fail naming the page (`name`), the texts missing and what it showed."""
    script = "([sel, texts]) => { const all = document.querySelectorAll(sel); const el = all[all.length - 1];"
    script += " const t = el ? el.innerText : ''; return texts.every(x => t.includes(x)); }"
    try:
        page.wait_for_function(script, arg=[within, list(texts)], timeout=PAGE_TIMEOUT_S * 1000)
    except PlaywrightError as error:
        shown = _text(page, within)
        missing = [t for t in texts if t not in shown]
        shot = Path(tempfile.gettempdir()) / f"ui-smoke-failed-{name.replace(' ', '-')}.png"
        with suppress(PlaywrightError):
            page.screenshot(path=str(shot))
        raise UiSmokeError(
            f"page {name!r} ({page.url}) does not show {missing} within {PAGE_TIMEOUT_S:.0f} s"
            f" (screenshot: {shot}); it shows:\n{shown[:2000]}"
        ) from error


def expect_link(page: Page, name: str, href_prefix: str) -> None:
    """Wait until `page` has a link whose href starts with `href_prefix`."""
    try:
        page.wait_for_selector(f'a[href^="{href_prefix}"]', state="attached", timeout=PAGE_TIMEOUT_S * 1000)
    except PlaywrightError as error:
        raise UiSmokeError(f"page {name!r} ({page.url}) has no link to {href_prefix}") from error


def expect_gone(page: Page, name: str, text: str) -> None:
    """Wait until `page` no longer shows `text` (a popover closed)."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while text in _text(page, "body"):
        if time.monotonic() > deadline:
            raise UiSmokeError(f"page {name!r} ({page.url}) still shows {text!r}")
        time.sleep(0.1)


def _wait_count(page: Page, name: str, text: str, count: int) -> None:
    """Wait until `page` shows `text` at least `count` times."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while _text(page, "body").count(text) < count:
        if time.monotonic() > deadline:
            raise UiSmokeError(f"page {name!r} ({page.url}) shows {text!r} fewer than {count} times")
        time.sleep(0.25)


def _shoot(page: Page, out: Path, filename: str, *, full_page: bool = False) -> Path:
    page.wait_for_timeout(1000)  # let the layout and transitions settle after the texts appeared
    path = out / filename
    page.screenshot(path=str(path), full_page=full_page)
    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return path


def _no_failure(page: Page, name: str, words: Sequence[str] = ("Failure", "STEP_FAILURE", "Traceback")) -> None:
    """Fail when `page` shows one of `words` (a failure): a parked run is not one."""
    shown = _text(page, "body")
    for word in words:
        if word in shown:
            raise UiSmokeError(f"page {name!r} ({page.url}) shows {word!r} for a parked run:\n{shown[:2000]}")


def _runs(dev: DagsterDev) -> tuple[str, str, str]:
    """Materialize the digest's assets and park a gated digest; their run ids and the gate's payload hash."""
    digest_run = dev.launch("digest", DIGEST_INPUTS)
    gated_run = dev.launch("gated_digest", GATED_INPUTS)
    digest = dev.wait_finished(digest_run, RUN_TIMEOUT_S)
    if digest.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the digest run {digest_run} ended {digest.status}:\n{dev.log_tail()}")
    gated = dev.wait_finished(gated_run, RUN_TIMEOUT_S)
    if gated.status != DagsterRunStatus.SUCCESS or gated.tags.get("flujo/parked") != "true":
        raise UiSmokeError(f"the gated_digest run {gated_run} did not park ({gated.status}, {gated.tags})")
    request = json.loads(gated.tags[f"flujo/request/{GATE}"])
    if request["path"] != GATE_PATH:
        raise UiSmokeError(f"the gated_digest run {gated_run} parked at {request['path']!r}, not {GATE_PATH!r}")
    return digest_run, gated_run, str(request["payload_hash"])


def _pages(browser: BrowserContext, dev: DagsterDev, out: Path, inbox: str, runs: tuple[str, str, str]) -> None:
    """Visit each page, check what it shows, save its screenshot under `out`. `runs`: the digest's run, the parked
    gated_digest run and its gate's payload hash; `inbox`: the inbox's URL the parked run links to."""
    digest_run, gated_run, payload_hash = runs
    url = dev.server.url
    page = browser.new_page()

    page.goto(f"{url}/locations/{dev.location}/asset-groups/digest/lineage")
    expect_texts(page, "asset graph", ["digest", *DIGEST_ASSETS, "Materialized"])
    shown = _text(page, "body")
    if shown.count("Materialized") < len(DIGEST_ASSETS):
        raise UiSmokeError(f"page 'asset graph' ({page.url}) shows fewer than {len(DIGEST_ASSETS)} materialized assets")
    _shoot(page, out, "asset-graph.png")

    page.goto(f"{url}/assets/digest/report")
    expect_texts(page, "asset materialization", ["report", "Latest materialization", "The final Markdown report."])
    expect_link(page, "asset materialization", f"/runs/{digest_run}")  # the latest one is the digest run's
    expect_texts(page, "asset materialization", ["flujo/pipeline", "digest"])
    # what a reviewer needs, on the latest materialization (docs/assets.md)
    review = ["flujo/preview", "Digest:", "flujo/type", "flujo/total_cost_usd", "flujo/models", "flujo/produced_by"]
    expect_texts(page, "asset materialization", review)
    _shoot(page, out, "asset-materialization.png")

    page.goto(f"{url}/runs?q%5B%5D=tag%3Aflujo%2Fparked%3Dtrue")  # the Runs page filtered by the parked tag
    expect_texts(page, "parked runs", [gated_run[:8], "gated_digest", "flujo/parked=true", "Success"])
    expect_texts(page, "parked runs", [f"{inbox_tag(GATE)}: http"])  # the tag linking the gate's inbox page
    if digest_run[:8] in _text(page, "body"):
        raise UiSmokeError(f"page 'parked runs' ({page.url}) lists the digest run {digest_run}, which did not park")
    _no_failure(page, "parked runs")
    _shoot(page, out, "parked-runs.png")

    page.goto(f"{url}/runs/{gated_run}?logs=step%3A{GATE_STEP}")  # the run's log, filtered to the gate's step
    request = [f"parked at {GATE_PATH}: waiting for a decision by anyone", "who may decide: anyone", "deadline: none"]
    expect_texts(page, "parked run", [gated_run[:8], "Success", "gated_digest", *request])
    _no_failure(page, "parked run")
    _shoot(page, out, "parked-run.png")

    page.get_by_text("View full message").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    expect_texts(
        page,
        "approval request",
        [
            *request,
            f"payload (sha256 {payload_hash})",
            "This week in python",
            f"flujo-dagster approve {gated_run} --gate '{GATE}'",
            f"flujo-dagster reject {gated_run} --gate '{GATE}'",
        ],
        within='[role="dialog"]',
    )
    _shoot(page, out, "approval-request.png")

    page.get_by_role("dialog").get_by_text("Show Markdown").first.click()  # the payload, rendered
    expect_texts(page, "approval payload", ["draft", "This week in python"], within='[role="dialog"]')
    _shoot(page, out, "approval-payload.png")

    page.goto(f"{url}/runs/{gated_run}")  # the run's tags: the gate's page in the inbox (FLUJO_DAGSTER_INBOX_URL)
    expect_texts(page, "parked run", ["View tags and config"])
    page.get_by_text("View tags and config").first.click()
    link = f"{inbox}/gates/{gated_run}/{GATE}"
    expect_texts(page, "parked run tags", [inbox_tag(GATE), link], within='[role="dialog"]')

    page.goto(f"{url}/locations/{dev.location}/asset-groups/gated_digest/lineage")
    expect_texts(page, "parked assets", ["gated_digest", "sources", "report", "Materialized"])
    _no_failure(page, "parked assets")
    _shoot(page, out, "parked-assets.png")
    page.close()


def _briefing_run(dev: DagsterDev) -> str:
    """Materialize the plain asset `orders`, then the orders briefing that reads it; the briefing run's id."""
    orders_run = dev.wait_finished(dev.launch("__ASSET_JOB", {}, assets=[["orders"]]), RUN_TIMEOUT_S)
    if orders_run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the orders run {orders_run.run_id} ended {orders_run.status}:\n{dev.log_tail()}")
    briefing = dev.wait_finished(dev.launch("orders_briefing", BRIEFING_INPUTS), RUN_TIMEOUT_S)
    if briefing.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the orders_briefing run {briefing.run_id} ended {briefing.status}:\n{dev.log_tail()}")
    return briefing.run_id


def _briefing_pages(browser: BrowserContext, dev: DagsterDev, out: Path) -> None:
    """The orders briefing's lineage from the plain asset it reads, and its Launchpad with the typed inputs."""
    url = dev.server.url
    page = browser.new_page()
    page.goto(f"{url}/assets/orders_briefing/totals?view=lineage&lineageScope=upstream")
    expect_texts(page, "upstream lineage", ["sales", "orders", "orders_briefing", "totals", "Materialized"])
    _wait_count(page, "upstream lineage", "Materialized", 2)  # both: the plain asset and the briefing's totals
    _shoot(page, out, "upstream-lineage.png")

    page.goto(f"{url}/locations/{dev.location}/jobs/orders_briefing/playground")
    # Dagster checks the typed inputs as they are typed: `team` is required, `top` shows its default
    missing = 'Missing required config entry "team" at path root:ops:orders_briefing_graph:ops:flujo_inputs'
    expect_texts(page, "launchpad", ["flujo_inputs", "top: 3", missing, "Scaffold missing config", "Launch Run"])
    page.get_by_text("Scaffold missing config").first.click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect_texts(page, "launchpad", ["team:", "top: 3", "No errors"])
    page.locator(".CodeMirror-line", has_text="team:").first.click()  # the cursor in the inputs: the docs
    page.keyboard.press("End")  # beside the editor describe them
    expect_texts(page, "launchpad", ["Who reads the briefing", "How many customers the briefing names at most"])
    _shoot(page, out, "launchpad-typed-inputs.png")
    page.close()


REVIEW_INPUTS = {
    "ops": {"reviewed_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}
}
EXTRAS_STEP = "reviewed_digest_graph.extras"


def _fused_pages(browser: BrowserContext, dev: DagsterDev, out: Path) -> None:
    """A reviewed digest: its inline Parallel `extras` yields one output, `flujo_keys`, with the per-step table."""
    run = dev.wait_finished(dev.launch("reviewed_digest", REVIEW_INPUTS), RUN_TIMEOUT_S)
    if run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the reviewed_digest run {run.run_id} ended {run.status}:\n{dev.log_tail()}")
    outputs = [
        e.dagster_event.step_output_data
        for e in dev.instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_OUTPUT)
        if e.dagster_event is not None and e.step_key == EXTRAS_STEP
    ]
    names = [o.output_name for o in outputs]
    if names != [BUNDLE_OUTPUT]:
        raise UiSmokeError(f"the reviewed_digest run {run.run_id}: step {EXTRAS_STEP} yielded {names}")
    table = outputs[0].metadata[STEPS_JSON].value
    paths = sorted(str(row["path"]) for row in table) if isinstance(table, list) else []
    if not any(p.endswith("title") for p in paths) or not any(p.endswith("tags") for p in paths):
        raise UiSmokeError(f"the reviewed_digest run {run.run_id}: {EXTRAS_STEP}'s step table lists {paths}")
    page = browser.new_page()
    page.goto(f"{dev.server.url}/runs/{run.run_id}?logs=step%3A{EXTRAS_STEP}")
    expect_texts(page, "fused inline op", [run.run_id[:8], "Success", "extras", BUNDLE_OUTPUT])
    _no_failure(page, "fused inline op")
    _shoot(page, out, "fused-inline-op.png")
    page.close()


def _launch_again(dev: DagsterDev) -> tuple[str, str]:
    """Materialize the digest's assets again with the same inputs, and, beside it, only its last asset (`report`);
    their run ids."""
    return dev.launch("digest", DIGEST_INPUTS), dev.launch("digest", DIGEST_INPUTS, assets=[["digest", "report"]])


def _step_outputs(dev: DagsterDev, run_id: str) -> dict[str, dict[str, object]]:
    """Each step's first output's metadata in run `run_id` (its asset checks' outputs follow), by step key."""
    outputs: dict[str, dict[str, object]] = {}
    for entry in dev.instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        data = entry.dagster_event.step_output_data if entry.dagster_event else None
        if data is not None and entry.step_key:
            outputs.setdefault(entry.step_key, {k: v.value for k, v in data.metadata.items()})
    return outputs


def _check_cached(dev: DagsterDev, run_id: str) -> float:
    """The digest run `run_id`, with unchanged inputs, made no model request: each agent step served from the
    call cache at $0, its records linked; `digest/draft`'s latest materialization is this run's, with the hit
    and the saved cost. What the hits saved in all."""
    run = dev.wait_finished(run_id, RUN_TIMEOUT_S)
    if run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the second digest run {run_id} ended {run.status}:\n{dev.log_tail()}")
    outputs = _step_outputs(dev, run_id)
    for key in DIGEST_AGENT_STEPS:
        meta = outputs.get(key, {})
        got = (meta.get(REQUESTS), meta.get(CACHE_HITS), meta.get(COST_USD), CALL_RECORDS in meta)
        if got != (0, 1, 0.0, True):
            raise UiSmokeError(f"step {key} of the second digest run {run_id} (requests, hits, cost, records): {got}")
    event = dev.instance.get_latest_materialization_event(AssetKey(["digest", "draft"]))
    materialization = event.asset_materialization if event is not None else None
    if event is None or materialization is None or event.run_id != run_id:
        raise UiSmokeError(f"digest/draft was not last materialized by run {run_id} ({event})")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    saved = meta.get(SAVED_COST_USD)
    if meta.get(CACHE_HITS) != 1 or meta.get(TOTAL_COST_USD) != 0.0 or not isinstance(saved, float) or saved <= 0:
        raise UiSmokeError(f"digest/draft's latest materialization ({run_id}) does not show a paid-for hit: {meta}")
    return saved


def _check_subset(dev: DagsterDev, run_id: str) -> None:
    """The subset run `run_id` succeeded and ran only the steps its selection (`digest/report`) needed."""
    run = dev.wait_finished(run_id, RUN_TIMEOUT_S)
    if run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the digest/report subset run {run_id} ended {run.status}:\n{dev.log_tail()}")
    ran = {e.step_key for e in dev.instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if e.step_key}
    if ran != SUBSET_STEPS:
        raise UiSmokeError(f"the digest/report subset run {run_id} ran {sorted(ran)}, not {sorted(SUBSET_STEPS)}")


def _metadata_values(page: Page) -> dict[str, str]:
    """The rendered metadata table of an asset page: each row's key (first cell) to its value (last cell)."""
    script = "() => Object.fromEntries([...document.querySelectorAll('tr')].map(r => [...r.querySelectorAll('td')])"
    script += ".filter(c => c.length > 1).map(c => [c[0].innerText.trim(), c[c.length - 1].innerText.trim()]))"
    values: dict[str, str] = page.evaluate(script)
    return values


def _cache_pages(browser: BrowserContext, dev: DagsterDev, out: Path, cached_run: str, subset_run: str) -> None:
    """`digest/draft` materialized again from the call cache, and the run of `digest/report` alone."""
    saved = _check_cached(dev, cached_run)
    _check_subset(dev, subset_run)
    url = dev.server.url
    page = browser.new_page()
    page.goto(f"{url}/assets/digest/draft")
    review = [CACHE_HITS, SAVED_COST_USD, TOTAL_COST_USD, REQUESTS, CALL_RECORDS]
    expect_texts(page, "cache hits", ["draft", "Latest materialization", "The writer agent's draft.", *review])
    expect_link(page, "cache hits", f"/runs/{cached_run}")  # the latest one is the cached run's
    shown = _metadata_values(page)
    expected = {CACHE_HITS: "1", SAVED_COST_USD: f"{saved:.6f}", TOTAL_COST_USD: "0", REQUESTS: "0", COST_USD: "0"}
    if {k: shown.get(k) for k in expected} != expected:
        raise UiSmokeError(f"page 'cache hits' ({page.url}) shows {shown}, not {expected}")
    # the table from the tokens down to the review metadata's total cost, in view
    page.get_by_text("flujo/input_tokens", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    _shoot(page, out, "cache-hits.png")

    page.goto(f"{url}/runs/{subset_run}")  # the gantt chart: the steps the selection needed, nothing upstream
    expect_texts(page, "subset run", [subset_run[:8], "Success", "Run of", "digest / report", *SUBSET_STEPS])
    expect_texts(page, "subset run", ["a subset of the assets of pipeline 'digest': no final context"])
    for skipped in ("digest_graph.sources", "digest_graph.draft"):
        if skipped in _text(page, "body"):
            raise UiSmokeError(f"page 'subset run' ({page.url}) shows step {skipped}, outside the selection")
    _shoot(page, out, "subset-run.png")
    page.close()


def _prompt_workspace(tmp: Path) -> tuple[Path, Path]:
    """A workspace file loading the example location (first: `dev.location`) and a second one, `prompt_change`,
    from a module written under `tmp` with the first prompt; the workspace file and the module."""
    module = tmp / "prompt_change.py"
    module.write_text(PROMPT_MODULE.replace("PROMPT", repr(PROMPTS[0]), 1))
    workspace = tmp / "workspace.yaml"
    example = {"module_name": "definitions", "attribute": "defs", "working_directory": str(ROOT)}
    second = {"relative_path": str(module), "attribute": "defs", "location_name": PROMPT_LOCATION}
    second["working_directory"] = str(ROOT)  # imports the example's offline model
    load_from = [{"python_module": example}, {"python_file": second}]
    workspace.write_text(json.dumps({"load_from": load_from}))  # JSON is YAML
    return workspace, module


def _change_prompt(dev: DagsterDev, module: Path, run_id: str) -> None:
    """Once run `run_id` (the prompt_change pipeline) has materialized both assets, change the note's prompt in
    `module` and reload its location, as "Reload definitions" does in the UI."""
    run = dev.wait_finished(run_id, RUN_TIMEOUT_S)
    if run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the prompt_change run {run_id} ended {run.status}:\n{dev.log_tail()}")
    module.write_text(PROMPT_MODULE.replace("PROMPT", repr(PROMPTS[1]), 1))
    reloaded = dev.server.graphql(RELOAD, {"name": PROMPT_LOCATION})["reloadRepositoryLocation"]
    entry = reloaded.get("locationOrLoadError") or {}
    if reloaded["__typename"] != "WorkspaceLocationEntry" or entry.get("__typename") != "RepositoryLocation":
        raise UiSmokeError(f"reloading {PROMPT_LOCATION} failed: {reloaded}")


def _stale_pages(browser: BrowserContext, dev: DagsterDev, out: Path) -> None:
    """After the prompt change: both assets of the pipeline unsynced, each for a new code version (the note's
    prompt, and the headline derived from it); the note's cause left open on the screenshot."""
    url = dev.server.url
    page = browser.new_page()
    page.goto(f"{url}/locations/{PROMPT_LOCATION}/asset-groups/{PROMPT_LOCATION}/lineage")
    expect_texts(page, "stale assets", ["note", "headline", "Materialized", "Unsynced (1)"])
    _wait_count(page, "stale assets", "Unsynced (1)", 2)  # the note, and the headline derived from it
    badges, named = page.get_by_text("Unsynced (1)"), []
    for index in range(2):
        page.mouse.move(0, 0)  # the previous popover closes
        expect_gone(page, "stale assets", "1 change since last materialization")
        badges.nth(index).hover()
        expect_texts(page, "stale assets", ["1 change since last materialization", "1 code version change"])
        expect_texts(page, "stale assets", ["has a new code version"])
        shown = _text(page, "body")
        named.append("note" if f"{PROMPT_LOCATION} / note" in shown else "headline")
    if sorted(named) != ["headline", "note"]:
        raise UiSmokeError(f"page 'stale assets' ({page.url}) names {named} as changed, not the note and headline")
    page.mouse.move(0, 0)
    expect_gone(page, "stale assets", "1 change since last materialization")
    badges.nth(named.index("note")).hover()
    expect_texts(page, "stale assets", [f"{PROMPT_LOCATION} / note", "has a new code version"])
    _shoot(page, out, "stale-assets.png")
    page.close()


def _decide_in_inbox(page: Page, inbox: str, out: Path | None, run_id: str, round_: int) -> str:
    """Open the gate of round `round_` (0-based) that run `run_id` is parked at in the inbox, edit the draft, type a
    name and a comment, approve; the id of the run the inbox resumed it as. Screenshots under `out` if given."""
    gate = GATES[round_]
    page.goto(f"{inbox}/gates/{run_id}/{gate}")
    form = ["Your decision", "Your name", "self-declared", "draft", "Comment", "Approve", "Reject"]
    expect_texts(page, "inbox gate", [gate, "gated_digest", "Decisions so far", "None yet.", *form])
    page.fill("#name", REVIEWER)
    page.fill('textarea[name="edit.draft"]', EDITS[round_])
    page.fill("#comment", COMMENTS[round_])
    if out is not None:
        _shoot(page, out, "inbox-gate.png", full_page=True)
    page.get_by_role("button", name="Approve").click()
    recorded = f"Recorded: approve by {REVIEWER} (self-declared) on gate {gate} of run {run_id}, editing draft."
    expect_texts(page, "inbox decided", [recorded, "The run resumes as run"])
    link = page.locator('a[href*="/runs/"]', has_text="run ").first
    resumed = (link.get_attribute("href") or "").rsplit("/", 1)[-1]
    if out is not None:
        _shoot(page, out, "inbox-decided.png")
    return resumed


def _resumed(dev: DagsterDev, run_id: str, parent: str) -> DagsterRun:
    """Resumed run `run_id` once finished, checked to be the inbox's resume of `parent` (not the sensor's)."""
    run = dev.wait_finished(run_id, RUN_TIMEOUT_S)
    by, parent_tag = run.tags.get(RESUMED_BY_TAG), run.tags.get("dagster/parent_run_id")
    if by != f"inbox: {REVIEWER}" or parent_tag != parent or "dagster/sensor_name" in run.tags:
        raise UiSmokeError(f"run {run_id} is not the inbox's resume of {parent} ({RESUMED_BY_TAG}={by!r}, {run.tags})")
    if run.status != DagsterRunStatus.SUCCESS:
        raise UiSmokeError(f"the resumed run {run_id} ended {run.status}:\n{dev.log_tail()}")
    return run


def _inbox_pages(browser: BrowserContext, dev: DagsterDev, inbox: str, out: Path, gated_run: str) -> list[str]:
    """The reviewers' inbox: the list, the first gate's page, its decision and the resume it launched; the second
    round's gate decided there too; then the edited draft and the approval records on the report. The ids of the
    runs the inbox resumed."""
    page = browser.new_page()
    page.goto(f"{inbox}/")
    listed = ["Pending gates", GATE, GATE_PATH, gated_run[:8], "This week in python", "May decide: anyone"]
    expect_texts(page, "inbox", [*listed, "Local mode: names are self-declared", "Review"])
    expect_link(page, "inbox", f"/gates/{gated_run}/{GATE}")
    _shoot(page, out, "inbox.png")
    run_id, chain = gated_run, []
    for round_ in range(len(GATES)):
        resumed = _decide_in_inbox(page, inbox, out if round_ == 0 else None, run_id, round_)
        run = _resumed(dev, resumed, run_id)
        parked = run.tags.get("flujo/parked") == "true"
        if parked != (round_ < len(GATES) - 1):
            raise UiSmokeError(f"the resumed run {resumed} (round {round_ + 1}) parked={parked}: {run.tags}")
        run_id = resumed
        chain.append(resumed)
    page.close()
    _check_final(dev, run_id)
    return chain


def _check_final(dev: DagsterDev, run_id: str) -> None:
    """The run that ended the chain holds the last edited draft, and `gated_digest/report`'s latest
    materialization carries both gates' approval records (the reviewer, the edited key)."""
    context = load_final_context(gated, run_id, instance=dev.instance)
    if getattr(context, "draft", None) != EDITS[-1]:
        raise UiSmokeError(f"run {run_id}'s final context holds draft {getattr(context, 'draft', None)!r}")
    event = dev.instance.get_latest_materialization_event(AssetKey(["gated_digest", "report"]))
    materialization = event.asset_materialization if event is not None else None
    if event is None or materialization is None or event.run_id != run_id:
        raise UiSmokeError(f"gated_digest/report was not materialized by run {run_id} ({event})")
    entry = materialization.metadata.get(APPROVALS)
    records = entry.value if entry is not None else None
    got = [(r.get("gate"), r.get("by"), r.get("edited")) for r in records] if isinstance(records, list) else records
    if got != [(g, REVIEWER, ["draft"]) for g in GATES]:
        raise UiSmokeError(f"gated_digest/report's {APPROVALS} are {got}, not both gates approved by {REVIEWER}")


def _wait_listening(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UiSmokeError(f"flujo-dagster inbox exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with suppress(URLError, OSError), urlopen(f"{url}/", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise UiSmokeError(f"flujo-dagster inbox did not answer at {url} within {PAGE_TIMEOUT_S:.0f} s")


@contextmanager
def inbox_server(home: Path, port: int, webserver_url: str) -> Iterator[str]:
    """`flujo-dagster inbox` on 127.0.0.1:`port` in local mode (names typed, self-declared), on DAGSTER_HOME `home`,
    resuming through `webserver_url`; yields its URL once it answers, stops its process group on the way out."""
    url = f"http://127.0.0.1:{port}"
    log = home / "inbox.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), WEBSERVER_URL_ENV: webserver_url, INBOX_URL_ENV: url}
    env.pop(INBOX_USER_HEADER_ENV, None)
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [str(FLUJO_DAGSTER), "inbox", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_listening(url, proc, log)
            yield url
        finally:
            _stop(proc)


def _chromium_processes(profile: Path) -> list[int]:
    """Live processes started with `profile` as their Chromium user data directory."""
    marker = str(profile).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@contextmanager
def chromium(executable: str, profile: Path) -> Iterator[BrowserContext]:
    """Headless Chromium at `executable` with a fresh user data directory `profile`; stops it, and anything it
    started, on the way out."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()
    deadline = time.monotonic() + 10
    while _chromium_processes(profile) and time.monotonic() < deadline:
        time.sleep(0.1)
    stray = _chromium_processes(profile)
    for pid in stray:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if stray:
        raise UiSmokeError(f"Chromium processes outlived the browser and were killed: {stray}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ui_smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--chromium", default=os.environ.get("FLUJO_UI_SMOKE_CHROMIUM", CHROMIUM))
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(
            f"ui-smoke: no Chromium at {args.chromium}; install Debian's: apt-get install -y chromium", file=sys.stderr
        )
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flujo-ui-smoke-") as tmp:
        home = Path(tmp) / "home"
        port = _free_port()  # the inbox's: parked runs link to it (FLUJO_DAGSTER_INBOX_URL)
        try:
            workspace, module = _prompt_workspace(Path(tmp))
            env = {INBOX_URL_ENV: f"http://127.0.0.1:{port}"}
            with dagster_dev(home, target=("-w", str(workspace)), interval_s=5, env=env) as dev:
                pgid = dev.pgid
                print(f"ui-smoke: dagster dev at {dev.server.url} ({time.monotonic() - started:.1f} s)", flush=True)
                dev.server.graphql("mutation { setNuxSeen }")  # no community sign-up dialog over the pages
                prompt_run = replace(dev, location=PROMPT_LOCATION).launch(PROMPT_LOCATION, PROMPT_INPUTS)
                runs = _runs(dev)
                briefing_run = _briefing_run(dev)
                print(
                    f"ui-smoke: digest {runs[0]} materialized, gated_digest {runs[1]} parked, orders_briefing "
                    f"{briefing_run} read the orders asset",
                    flush=True,
                )
                with (
                    inbox_server(home, port, dev.server.url) as inbox,
                    chromium(args.chromium, Path(tmp) / "chromium-profile") as browser,
                ):
                    _pages(browser, dev, out, inbox, runs)
                    again = _launch_again(dev)  # after the pages of the first digest run's materializations
                    _briefing_pages(browser, dev, out)
                    resumed = _inbox_pages(browser, dev, inbox, out, runs[1])
                    _cache_pages(browser, dev, out, *again)
                    _change_prompt(dev, module, prompt_run)
                    _stale_pages(browser, dev, out)
                    _fused_pages(browser, dev, out)
                print(f"ui-smoke: inbox at {inbox}: both gates approved, resumed at once as {', '.join(resumed)}")
        except (UiSmokeError, DagsterDevError) as error:
            print(f"ui-smoke FAILED: {error}", file=sys.stderr)
            return 1
        if leftovers(home) or group_members(pgid):
            print(f"ui-smoke FAILED: processes outlived dagster dev: {leftovers(home) + group_members(pgid)}")
            return 1
    print(f"ui-smoke: 16 views of 14 pages checked, screenshots in {out} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
