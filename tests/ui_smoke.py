"""`make ui-smoke`: the Dagster UI as a user sees it, in headless Chromium, with the example code location.

Boots `dagster dev -w workspace.yaml` on 127.0.0.1 (tests/dagster_dev.py: a temporary DAGSTER_HOME, a free port,
the approvals sensor aimed at it, the whole process group stopped at the end), materializes the `digest` example's
assets and launches `gated_digest` so that its run parks at the first approval gate (both through GraphQL, as the
Launchpad does), then drives Debian's Chromium (`/usr/bin/chromium`, through Playwright; no browser is downloaded)
to each page below, waits until the single-page app has rendered the names a user would look for (read from the
page's text once rendered), and saves a screenshot of it under docs/screenshots/:

1. `asset-graph.png`: the `digest` asset group's lineage graph, every asset materialized;
2. `asset-materialization.png`: the `digest/report` asset, its latest materialization linking to the run above;
3. `parked-runs.png`: the Runs page filtered by the tag `flujo/parked=true`: the gated run (Success: a park is
   not a failure), not the digest's;
4. `parked-run.png`: the parked `gated_digest` run, its log filtered to the gate step: the request, readable, with
   no failure and no traceback;
5. `approval-request.png`: that request opened in full: the gate's path, what it waits for, who may decide, the
   deadline, the payload (the round's draft) and its hash, and the commands to decide;
6. `approval-payload.png`: the payload shown to the reviewer, rendered as Markdown;
7. `parked-assets.png`: the `gated_digest` asset group: `sources`, made before the gate, materialized; `report`
   and the final context, after it, not failed.

A page that does not show what it should fails the smoke with the page, its URL, the missing text and what the page
showed instead (and a screenshot of it in the temporary directory). Not collected by pytest; run it as
`python -m tests.ui_smoke [--out DIR] [--chromium PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from dagster import DagsterRunStatus
from playwright.sync_api import BrowserContext, Page, ViewportSize, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.dagster_dev import DagsterDev, DagsterDevError, dagster_dev, group_members, leftovers
from tests.test_webserver import ROOT

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
DIGEST_ASSETS = ["sources", "draft", "report", "final_context"]
GATE = "revise__i1__sign_off"
GATE_PATH = "gated_digest > loop:revise > i1 > approval:sign_off"
GATE_STEP = f"gated_digest_graph.{GATE}"


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


def _shoot(page: Page, out: Path, filename: str) -> Path:
    page.wait_for_timeout(1000)  # let the layout and transitions settle after the texts appeared
    path = out / filename
    page.screenshot(path=str(path))
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


def _pages(
    browser: BrowserContext, dev: DagsterDev, out: Path, digest_run: str, gated_run: str, payload_hash: str
) -> None:
    """Visit each page, check what it shows, save its screenshot under `out`."""
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

    page.goto(f"{url}/locations/{dev.location}/asset-groups/gated_digest/lineage")
    expect_texts(page, "parked assets", ["gated_digest", "sources", "report", "final_context", "Materialized"])
    _no_failure(page, "parked assets")
    _shoot(page, out, "parked-assets.png")
    page.close()


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
        try:
            with dagster_dev(home, interval_s=5) as dev:
                pgid = dev.pgid
                print(f"ui-smoke: dagster dev at {dev.server.url} ({time.monotonic() - started:.1f} s)", flush=True)
                dev.server.graphql("mutation { setNuxSeen }")  # no community sign-up dialog over the pages
                digest_run, gated_run, payload_hash = _runs(dev)
                print(f"ui-smoke: digest {digest_run} materialized, gated_digest {gated_run} parked", flush=True)
                with chromium(args.chromium, Path(tmp) / "chromium-profile") as browser:
                    _pages(browser, dev, out, digest_run, gated_run, payload_hash)
        except (UiSmokeError, DagsterDevError) as error:
            print(f"ui-smoke FAILED: {error}", file=sys.stderr)
            return 1
        if leftovers(home) or group_members(pgid):
            print(f"ui-smoke FAILED: processes outlived dagster dev: {leftovers(home) + group_members(pgid)}")
            return 1
    print(f"ui-smoke: 7 views of 5 pages checked, screenshots in {out} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
