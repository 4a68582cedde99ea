"""One validation pass: `validate`, `build_definitions` and `flujo-dagster validate` give the same findings on every
pipeline of the tests, and `on_invalid="quarantine"` survives every rule code.

Which pipelines: every `Pipeline` reachable from a module-level name of the test-support modules and test files
(tests/, tests/fixtures/, definitions/, the dg example), directly or inside lists, tuples, dicts, dataclasses and
`pytest.mark.parametrize` arguments; every `Pipeline` constructed while those modules are imported (when this
process has not imported them yet) and while the validation tests' functions run (a profile hook records each
`Pipeline.__init__` that returns); and the corpus of tests/validation_corpus.py, one case per rule code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from dagster import AssetKey, AssetSpec, DagsterInstance, Definitions, ResourceDefinition, build_sensor_context

from flujo_dagster import AgentRuntime, ConfigurationError, Pipeline, PriceBook, ValidationReport, build_definitions
from flujo_dagster.adapter.ops.injection import step_resource_keys
from flujo_dagster.cli import main
from flujo_dagster.dsl.flow import walk
from flujo_dagster.names import AGENT_RUNTIME_KEY, PRICE_BOOK_KEY, VALIDATION_SENSOR
from flujo_dagster.validation import validate
from tests.conftest import HIGHEST_ENV
from tests.validation_corpus import CASES, Case, healthy

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = [
    *sorted(ROOT.glob("tests/*.py")),
    *sorted(ROOT.glob("tests/fixtures/*.py")),
    *sorted(ROOT.glob("definitions/*.py")),
    *sorted(ROOT.glob("examples/dg_digest/dg_digest/*.py")),
]
T = TypeVar("T")
DAGSTER_CRON_WARNING = "Found a cron schedule with an interval greater than the expected range"
VALIDATION_TESTS = ["tests.test_validation", "tests.test_validation_flow", "tests.test_validation_dagster"]
DEPLOY_MODULES = ("tests.deploy_defs", "tests.deploy_services", "tests.deploy_smoke")
NEEDS_INTEGRATION = dict.fromkeys(DEPLOY_MODULES, "dagster_celery")
"""Support modules that import a dagster-* integration: left out only on CI's highest run, where no release of it
pins that dagster yet (tests/conftest.py); anywhere else their import must work."""


def _left_out(name: str) -> bool:
    """Whether support module `name` is left out here: its integration is missing on the highest run."""
    needed = NEEDS_INTEGRATION.get(name)
    return needed is not None and os.environ.get(HIGHEST_ENV) == "1" and importlib.util.find_spec(needed) is None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "examples":
        parts = parts[2:]  # examples/dg_digest/<package>
    return ".".join(parts).removesuffix(".__init__")


# --- the three ways ----------------------------------------------------------------------------------------------


def settings(resources: Mapping[str, object]) -> dict[str, Any]:
    """The validation options a code location's resources stand for (what the CLI reads from a `Definitions`)."""
    runtime, book = resources.get(AGENT_RUNTIME_KEY), resources.get(PRICE_BOOK_KEY)
    return {
        "runtime": runtime if isinstance(runtime, AgentRuntime) else None,
        "prices": book if isinstance(book, PriceBook) else None,
    }


def cli_output(module: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", module])
    return result.exit_code, result.stdout


def cli_on(pipelines: Sequence[Pipeline], resources: Mapping[str, object]) -> tuple[int, str]:
    """`flujo-dagster validate` on a module holding `pipelines` (and a `Definitions` with `resources`)."""
    name = f"flujo_parity_target_{id(pipelines)}"
    module = ModuleType(name)
    module.pipelines = list(pipelines)  # type: ignore[attr-defined]
    if resources:
        module.defs = Definitions(resources=dict(resources))  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        return cli_output(f"{name}:pipelines")
    finally:
        del sys.modules[name]


@contextlib.contextmanager
def dagster_warns_as(report: ValidationReport) -> Iterator[None]:
    """Dagster warns, while the definitions build, about what validation reports as a warning: a cron step past
    its range (SCHED-003) of a pipeline that is compiled. Any other warning fails the test (pytest turns warnings
    into errors)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=DAGSTER_CRON_WARNING)
        yield
    invalid = set(report.invalid_pipelines)
    stepped = [f for f in report.warnings if f.code == "SCHED-003" and f.pipeline not in invalid]
    assert bool(caught) == bool(stepped), [str(w.message) for w in caught]


def read_assets(pipelines: Sequence[Pipeline]) -> Definitions:
    """The assets the pipelines read (`upstream=`), declared as external assets: Dagster loads a code location
    only when every asset an asset reads is defined there."""
    keys = dict.fromkeys(AssetKey(list(path)) for p in pipelines for path in p.upstream.values())
    return Definitions(assets=[AssetSpec(key) for key in keys])


def stand_ins(pipelines: Sequence[Pipeline]) -> dict[str, object]:
    """A stand-in for each resource the pipelines' steps use (their own location provides the real ones), so
    that a pipeline taken out of its location loads: what validation finds does not depend on them."""
    keys = step_resource_keys(s for p in pipelines for _, s in walk(p.steps, p.name))
    return {key: ResourceDefinition.none_resource() for key in keys}


def three_ways(pipelines: Sequence[Pipeline], resources: Mapping[str, object] | None = None) -> ValidationReport:
    """The report of `validate`, after checking that `build_definitions` raises with exactly its errors (or builds
    definitions Dagster loads when there are none) and that the CLI prints exactly it."""
    resources = dict(resources or {})
    report = validate(pipelines, **settings(resources)) if resources else validate(pipelines)
    try:
        with dagster_warns_as(report):
            defs = build_definitions(pipelines=pipelines, resources={**stand_ins(pipelines), **resources})
            Definitions.validate_loadable(Definitions.merge(defs, read_assets(pipelines)))
    except ConfigurationError as exc:
        assert exc.findings, str(exc)
        assert exc.findings == report.errors
    else:
        assert report.ok, str(report)
    assert cli_on(pipelines, resources) == (0 if report.ok else 4, f"{report}\n")
    return report


# --- enumerating the pipelines of the tests ----------------------------------------------------------------------


def reachable(value: object, seen: set[int]) -> Iterator[Pipeline]:
    """The pipelines in `value`: itself, or inside builtin containers, dataclasses and parametrize arguments."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, Pipeline):
        yield value
    elif type(value) is dict:
        for item in value.values():
            yield from reachable(item, seen)
    elif type(value) in (list, tuple, set, frozenset):
        for item in value:  # type: ignore[attr-defined]
            yield from reachable(item, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from reachable(getattr(value, f.name), seen)
    elif inspect.isfunction(value):
        for mark in getattr(value, "pytestmark", ()):
            for row in mark.args[1] if mark.name == "parametrize" else ():
                values = getattr(row, "values", None)  # a pytest.param's values; a dict's is a method
                yield from reachable(values if isinstance(values, tuple) else (row,), seen)


class Constructed:
    """Records every Pipeline whose `__init__` returns while it is active (a profile hook; nothing is patched)."""

    def __init__(self) -> None:
        self.made: list[Pipeline] = []
        self._init = Pipeline.__init__.__code__

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "return" and frame.f_code is self._init:
            made = frame.f_locals.get("self")
            if isinstance(made, Pipeline) and "_initial" in vars(made):  # its __init__ completed
                self.made.append(made)

    def run(self, call: Callable[[], T]) -> T:
        previous = sys.getprofile()
        sys.setprofile(self._hook)
        try:
            return call()
        finally:
            sys.setprofile(previous)


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ConfigurationError:  # tests/fixtures/broken_definitions: its build_definitions raises by design
        return None


def _test_calls(module: ModuleType) -> Iterator[Callable[[], object]]:
    """Each call of the module's test functions that needs no fixture (one per parametrize row); the tests that
    compare validation with Dagster's own checks build no pipeline and are left out."""
    for name, fn in vars(module).items():
        if not name.startswith("test_") or not inspect.isfunction(fn) or "_agrees_with_dagster_" in name:
            continue
        params = list(inspect.signature(fn).parameters)
        marks = [m for m in getattr(fn, "pytestmark", ()) if m.name == "parametrize"]
        if not params:
            yield fn
        elif len(marks) == 1 and [p.strip() for p in str(marks[0].args[0]).split(",")] == params:
            for row in marks[0].args[1]:
                values = row.values if hasattr(row, "values") else (row if len(params) > 1 else (row,))
                yield functools.partial(fn, *values)


@functools.cache
def enumerated() -> tuple[list[Pipeline], list[ModuleType]]:
    """Every pipeline of the tests (see the module docstring) and the modules imported."""
    constructed = Constructed()
    modules: list[ModuleType] = []
    for path in SUPPORT:
        name = module_name(path)
        if name in (__name__, "tests.conftest") or _left_out(name):
            continue
        module = constructed.run(functools.partial(_import, name))
        if module is not None:
            modules.append(module)
    for name in VALIDATION_TESTS:
        for call in _test_calls(importlib.import_module(name)):
            constructed.run(call)
    seen: set[int] = set()
    found = [p for m in modules for value in vars(m).values() for p in reachable(value, seen)]
    found += [p for p in constructed.made if id(p) not in seen and not seen.add(id(p))]  # type: ignore[func-returns-value]
    return found, modules


def test_every_pipeline_of_the_tests_gets_the_same_findings_three_ways() -> None:
    pipelines, _ = enumerated()
    names = {p.name for p in pipelines}
    # module-level (definitions/, *_defs), built inline at import (broken_definitions), in validation tests
    assert {"digest", "reviewed_digest", "gated", "checked", "counts", "notes", "plans", "healthy"} <= names
    assert len(pipelines) > 100, len(pipelines)
    codes: set[str] = set()
    for pipeline in pipelines:
        codes |= {f.code for f in three_ways([pipeline]).findings}
    assert {"V-CTX1", "V-CTX2", "V-TYPE", "V-NAME", "PRICE-001", "SCHED-003"} <= codes  # invalid ones are among them


def test_every_code_location_module_gets_the_same_findings_three_ways() -> None:
    """Modules with a `Definitions`: the CLI on the module, `validate` and `build_definitions` with its resources."""
    _, modules = enumerated()
    checked = []
    for module in modules:
        defs = next((v for v in vars(module).values() if isinstance(v, Definitions)), None)
        pipelines = list({id(v): v for v in vars(module).values() if isinstance(v, Pipeline)}.values())
        if defs is None or not pipelines:
            continue
        resources = dict(defs.resources or {})
        report = validate(pipelines, **settings(resources))
        try:
            build_definitions(pipelines=pipelines, resources=resources)
        except ConfigurationError as exc:
            assert exc.findings == report.errors
        else:
            assert report.ok
        assert cli_output(module.__name__) == (0 if report.ok else 4, f"{report}\n")
        checked.append(module.__name__)
    assert {"definitions", "tests.review_defs", "tests.approval_defs", "tests.policy_defs"} <= set(checked)


# --- the corpus: every rule code ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_rule_code_gets_the_same_findings_three_ways(case: Case) -> None:
    report = three_ways(case.pipelines, case.resources)
    assert tuple((f.code, f.severity) for f in report.findings) == case.expected


def _codes_in(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


def test_the_corpus_covers_every_rule_code_the_package_emits_and_the_docs_list() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "flujo_dagster" / "validation").glob("*.py"))
    emitted = _codes_in(source, r'"([A-Z]+(?:-[A-Z0-9]+)+)"')  # every rule code is a string literal there
    catalog = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
    documented = _codes_in(catalog, r"(?m)^\| ([A-Z][A-Z0-9-]+) \|")
    covered = {code for case in CASES.values() for code, _ in case.expected}
    assert emitted == covered == documented


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_quarantine_survives_every_rule_code(case: Case) -> None:
    """The healthy pipeline still loads, the invalid ones are left out, the sensor carries their findings."""
    report = validate([healthy, *case.pipelines], **settings(case.resources))
    with dagster_warns_as(report):
        defs = build_definitions(
            pipelines=[healthy, *case.pipelines], resources=case.resources, on_invalid="quarantine"
        )
        Definitions.validate_loadable(defs)
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    left_out = set(report.invalid_pipelines)
    assert "healthy" in jobs and "healthy" not in left_out
    assert {p.name for p in case.pipelines} - left_out <= jobs
    assert not jobs & left_out
    sensors = {s.name: s for s in defs.sensors or []}
    if not report.errors:  # a warning leaves nothing out
        assert VALIDATION_SENSOR not in sensors
        return
    sensor = defs.resolve_sensor_def(VALIDATION_SENSOR)
    with DagsterInstance.ephemeral() as instance, pytest.raises(ConfigurationError) as raised:
        sensor(build_sensor_context(instance=instance, definitions=defs))
    assert raised.value.findings == report.errors
    left = report.invalid_pipelines
    assert str(raised.value).startswith(
        f"flujo_dagster left {len(left)} invalid pipeline(s) out of this code location ({', '.join(left)})"
    )
