"""Property tests over the DSL: hypothesis builds pipelines of Loop, Branch, Parallel, Group and Map nodes
(nested up to three levels, random `inline=True`) over leaf steps computing small affine functions of int keys.
Some leaves fail: the first calls with the same inputs (flaky, within their retries), every call (always), or
every call with an error that refuses retries (`allow_retries=False`, as `dagster.Failure` says it).

- Valid pipelines validate without findings, and end with the final context that the reference evaluator
  (tests/reference.py, which shares no execution code with the library) computes: run through the in-process
  interpreter alone, and run on a persistent Dagster instance both as generated (expanded into ops) and with
  the whole tree in one inline group. Every step is called as often as the reference calls it, and tried again
  as often. When the reference says the run must fail (a loop exhausted with `on_exhausted="fail"`, a branch
  without a matching case, a step out of retries), every form fails, naming a loop, a branch or a failing step
  with its own error (never "Exceeded max_retries").
- Broken pipelines (a key read before it is written and without default, a key written on some paths only,
  duplicate or illegal names, parallel branches writing one key, unknown keys, malformed control flow) always
  give an error finding of the expected rule, `validate` never raises, and `build_definitions` refuses them with
  `ConfigurationError`.

Bugs the properties found are kept as minimal regular tests below the properties (strict xfail while open).
`FLUJO_PROPERTY_RUNS=60 pytest tests/test_property.py` searches longer on Dagster (default 12 examples).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._core.execution.plan.active import ActiveExecution
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from flujo_dagster import ConfigurationError, Pipeline, Retry, build_definitions, run_pipeline, validate
from flujo_dagster.dsl import Branch, FunctionStep, Group, Loop, Map, Parallel, Step, step
from flujo_dagster.dsl.control import runs_in_one_op
from flujo_dagster.dsl.flow import children, flow_of_steps, walk
from flujo_dagster.errors import ControlFlowError
from flujo_dagster.runtime.interpreter import Interpreter
from flujo_dagster.runtime.records import StepRecord
from flujo_dagster.validation.scale import expanded_ops
from tests import reference
from tests.reference import Attempts, ControlFailure, RunFails, evaluate

ROOT = Path(__file__).resolve().parent.parent


class Ctx(BaseModel):
    """`x` is the one required input; the int keys start at 0; a Map goes over `xs` (or `ys`) into `ys`."""

    x: int
    a: int = 0
    b: int = 0
    c: int = 0
    d: int = 0
    it: int = 0
    xs: list[int] = Field(default_factory=lambda: [1, 2, 3])
    ys: list[int] = Field(default_factory=list)


class Broken(Ctx):
    """`z` has no default: a step that reads it before any step writes it is an error (V-CTX1)."""

    z: int


MOD = 101
INT_KEYS = ("a", "b", "c", "d")
READ_KEYS = ("x", *INT_KEYS, "it")
MAX_OPS = 32
"""Examples expanding to more ops are skipped: an op costs about 50 ms per run."""
RUN_EXAMPLES = int(os.environ.get("FLUJO_PROPERTY_RUNS", "12"))
"""Examples run on Dagster (each is two runs); raise it through the environment to search longer."""
MAP_BODY_WRITES_RESULT = False
"""True restricts generated Map bodies to ones that end by writing the result key (the workaround for the bug
`test_map_whose_body_does_not_write_its_defaulted_result_key` showed; fixed)."""
ASSETS_ONLY_WITHOUT_SILENT_NODES = False
"""True gives no assets to generated pipelines with a node that writes no key (the workaround for the bug
`test_assets_beside_a_node_that_writes_no_key` showed; fixed)."""
CONTROL_FAILURE = re.compile(r"did not meet its `until` condition|no case matches")
RETRIED = re.compile(r"> step:(\w+): attempt \d+ of \d+ failed with")
"""A leaf's warning that a failed attempt will be tried again, naming the leaf."""
STEP_FAILURE = re.compile(r"(?:ValueError: always|Refusal: refused) (\w+)")
"""The own error of a failing leaf, naming it."""


# --- leaf functions, predicates and selectors -------------------------------------------------------------------


def keyed(fn: Callable[..., object], keys: Sequence[str], text: str) -> Callable[..., object]:
    """Give `fn(**values)` a signature whose parameters are `keys` (the DSL reads parameter names as keys) and
    a docstring describing it (the falsifying example prints it)."""
    fn.__signature__ = inspect.Signature([inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in keys])
    fn.__doc__ = text
    return fn


def affine(
    reads: Sequence[str], mults: Sequence[int], writes: Sequence[str], adds: Sequence[int]
) -> Callable[..., object]:
    """out_k = (sum(m_i * read_i) + add_k) % MOD for each written key k; a mapping when it writes several."""

    def fn(**values: int):  # no return annotation: one int, or a mapping of ints
        base = sum(m * values[k] for k, m in zip(reads, mults, strict=True))
        out = {k: (base + add) % MOD for k, add in zip(writes, adds, strict=True)}
        return out if len(writes) > 1 else out[writes[0]]

    terms = " + ".join(f"{m}*{k}" for k, m in zip(reads, mults, strict=True)) or "0"
    text = ", ".join(f"{k} = ({terms} + {add}) % {MOD}" for k, add in zip(writes, adds, strict=True))
    return keyed(fn, reads, text)


def at_least(key: str, threshold: int) -> Callable[..., object]:
    return keyed(lambda **v: v[key] >= threshold, (key,), f"{key} >= {threshold}")


def residue(key: str, modulus: int, remainder: int) -> Callable[..., object]:
    return keyed(lambda **v: v[key] % modulus == remainder, (key,), f"{key} % {modulus} == {remainder}")


def modulo(key: str, modulus: int) -> Callable[..., object]:
    return keyed(lambda **v: v[key] % modulus, (key,), f"{key} % {modulus}")


class Refusal(Exception):
    """A step's own error that refuses retries, as `dagster.Failure(allow_retries=False)` does."""

    allow_retries = False


CALLS: Counter[str] = Counter()
"""Observed: how often each step's function was called in the current run (`reset_calls` before a run)."""
_FLAKY: Counter[tuple[str, tuple[tuple[str, object], ...]]] = Counter()


def reset_calls() -> None:
    CALLS.clear()
    _FLAKY.clear()


def behaving(
    fn: Callable[..., object], name: str, reads: Sequence[str], mode: str, times: int
) -> Callable[..., object]:
    """`fn`, counted in CALLS under `name`, failing as `mode` says: `ok` never; `flaky` the first `times` calls
    with the same inputs (RuntimeError); `always` every call (ValueError); `refuse` every call (`Refusal`, which
    refuses retries). Counting flaky calls per inputs makes a run's calls independent of the order in which
    concurrent branches and items run."""

    def wrapped(**values: int):  # no return annotation, as `affine`'s
        CALLS[name] += 1
        if mode == "always":
            raise ValueError(f"always {name}")
        if mode == "refuse":
            raise Refusal(f"refused {name}")
        if mode == "flaky":
            _FLAKY[(name, tuple(sorted(values.items())))] += 1
            if _FLAKY[(name, tuple(sorted(values.items())))] <= times:
                raise RuntimeError(f"flaky {name}")
        return fn(**values)

    wrapped.mode = mode  # type: ignore[attr-defined]
    text = fn.__doc__ if mode == "ok" else f"{fn.__doc__}; {mode}{f' {times}x' if mode == 'flaky' else ''}"
    return keyed(wrapped, reads, text or "")


# --- the generator ---------------------------------------------------------------------------------------------


def written_by(steps: Sequence[Step]) -> set[str]:
    """The keys some leaf in `steps` writes (roughly: for choosing a loop's `until` key)."""
    return {k for _, s in walk(steps, "") if isinstance(s, FunctionStep) for k in s.output_keys or (s.name,)}


class Builder:
    """Draws a valid DSL tree. `writable` is the set of keys a subtree may write: parallel branches get disjoint
    ones (V-PAR1); `ys` is written only by a Map. `x` and `it` are never written (`x` stays a run input)."""

    def __init__(self, draw: st.DrawFn, inline_chance: int, fail_chance: int) -> None:
        self.draw = draw
        self.inline_chance = inline_chance
        self.fail_chance = fail_chance
        self.count = 0
        self.used: set[str] = set()

    def name(self, prefix: str) -> str:
        self.count += 1
        name = f"{prefix}{self.count}"
        self.used.add(name)
        return name

    def once_in(self, chance: int) -> bool:
        """True about once in `chance` draws."""
        return self.draw(st.integers(1, chance)) == 1

    def seq(self, depth: int, writable: frozenset[str], least: int, most: int) -> list[Step]:
        size = self.draw(st.integers(least, most))
        return [self.node(depth, writable) for _ in range(size)]

    def node(self, depth: int, writable: frozenset[str]) -> Step:
        kinds = ["leaf"]
        if depth > 0:
            kinds += ["loop", "branch", "parallel", "group"]
            if "ys" in writable:
                kinds.append("map")
        kind = self.draw(st.sampled_from(kinds))
        if kind == "loop":
            return self.loop(depth, writable)
        if kind == "branch":
            return self.branch(depth, writable)
        if kind == "parallel":
            return self.parallel(depth, writable)
        if kind == "group":
            steps = self.seq(depth - 1, writable, 0, 3)
            return Group(self.name("g"), steps=steps, inline=self.once_in(self.inline_chance))
        if kind == "map":
            return self.map(depth)
        return self.leaf(writable)

    def leaf(self, writable: frozenset[str]) -> FunctionStep:
        ints = sorted(writable & set(INT_KEYS))
        writes: list[str] = self.draw(st.lists(st.sampled_from(ints), min_size=1, max_size=2, unique=True))
        reads: list[str] = self.draw(st.lists(st.sampled_from(READ_KEYS), max_size=2, unique=True))
        if self.draw(st.booleans()) and writes[0] not in reads:  # often an update (k = f(k, ...)): loops matter
            reads = [writes[0], *reads[:1]]
        mults: list[int] = self.draw(st.lists(st.integers(1, 3), min_size=len(reads), max_size=len(reads)))
        adds: list[int] = self.draw(st.lists(st.integers(0, 9), min_size=len(writes), max_size=len(writes)))
        inline = self.once_in(self.inline_chance + 2)
        # the step named like the key it writes (reads inferred from the parameters), or sN
        like_key = len(writes) == 1 and writes[0] not in self.used and self.draw(st.booleans())
        name = writes[0] if like_key else self.name("s")
        self.used.add(name)
        failing = self.once_in(self.fail_chance)
        mode: str = self.draw(st.sampled_from(["always", "refuse"] if failing else ["ok", "ok", "flaky"]))
        times = self.draw(st.integers(1, 2)) if mode == "flaky" else 0
        least = {"flaky": times, "refuse": 1}.get(mode, 0)  # flaky steps succeed in the end
        retries = self.draw(st.integers(least, 2))
        fn = behaving(affine(reads, mults, writes, adds), name, reads, mode, times)
        retry = Retry(max_retries=retries, delay=timedelta(seconds=0.0), backoff="constant")
        if like_key:
            return step(name=name, inline=inline, retry=retry)(fn)
        explicit = self.draw(st.booleans())
        return step(
            name=name,
            input_keys=reads if explicit else None,
            output_keys=writes,
            inline=inline,
            retry=retry,
        )(fn)

    def loop(self, depth: int, writable: frozenset[str]) -> Loop:
        body = self.seq(depth - 1, writable, 1, 2)
        changed = sorted(written_by(body) & set(INT_KEYS))
        key: str = self.draw(st.sampled_from(changed if changed and self.draw(st.booleans()) else READ_KEYS))
        if self.draw(st.booleans()):
            until = at_least(key, self.draw(st.integers(0, MOD)))
        else:
            modulus = self.draw(st.integers(2, 3))
            until = residue(key, modulus, self.draw(st.integers(0, modulus - 1)))
        return Loop(
            self.name("loop"),
            body=body,
            until=until,
            max_iterations=self.draw(st.integers(1, 3)),
            on_exhausted=self.draw(st.sampled_from(["fail", "continue", "continue"])),
            inline=self.once_in(self.inline_chance),
        )

    def branch(self, depth: int, writable: frozenset[str]) -> Branch:
        key: str = self.draw(st.sampled_from(READ_KEYS))
        on: str | Callable[..., Hashable]
        if self.draw(st.booleans()):
            on, values = key, list(range(4))  # the key itself: 0 is every default
        else:
            modulus = self.draw(st.integers(2, 3))
            on, values = modulo(key, modulus), list(range(modulus))
        chosen: list[int] = self.draw(st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True))
        cases = {value: self.seq(depth - 1, writable, 0, 2) for value in chosen}
        default = self.seq(depth - 1, writable, 0, 2) if not self.once_in(3) else None
        return Branch(self.name("br"), on=on, cases=cases, default=default, inline=self.once_in(self.inline_chance))

    def parallel(self, depth: int, writable: frozenset[str]) -> Parallel:
        ints: list[str] = self.draw(st.permutations(sorted(writable & set(INT_KEYS))))
        count = self.draw(st.integers(1, min(3, len(ints))))
        owned: list[set[str]] = [{ints[i]} for i in range(count)]  # every branch can write some key
        for key in [*ints[count:], *(["ys"] if "ys" in writable else [])]:
            owner = self.draw(st.integers(-1, count - 1))
            if owner >= 0:
                owned[owner].add(key)
        inline = self.draw(st.booleans())
        failure = self.draw(st.sampled_from(["fail", "ignore"])) if inline else "fail"
        return Parallel(
            self.name("par"),
            branches={f"p{i}": self.seq(depth - 1, frozenset(keys), 1, 2) for i, keys in enumerate(owned)},
            on_branch_failure=failure,
            inline=inline,
        )

    def map(self, depth: int) -> Map:
        result = self.draw(st.sampled_from(INT_KEYS))
        body = self.seq(depth - 1, frozenset({*INT_KEYS, "ys"}), 1, 2)  # what the body writes is per item
        inline = self.draw(st.booleans())
        if MAP_BODY_WRITES_RESULT or (not inline and result not in flow_of_steps(body, Ctx.model_fields).must):
            body.append(self.leaf(frozenset({result})))  # expanded, the result is collected from its writer
        return Map(
            self.name("map"),
            over=self.draw(st.sampled_from(["xs", "ys"])),
            item="it",
            body=body,
            result=result,
            into="ys",
            max_concurrency=self.draw(st.sampled_from([None, 1, 2])),
            inline=inline,
        )


Case = tuple[Pipeline, dict[str, object]]


def describe(steps: Sequence[Step], indent: int = 0) -> Iterator[str]:
    """The tree as indented text (hypothesis prints it with a falsifying example)."""
    pad = "  " * indent
    for s in steps:
        flags = " inline" if s.inline else ""
        if isinstance(s, FunctionStep):
            keys = f" input_keys={list(s.input_keys)}" if s.input_keys is not None else ""
            retry = f" retries={s.retry.max_retries}" if s.retry.max_retries else ""
            yield f"{pad}step {s.name}{flags}{keys}{retry}: {s.fn.__doc__}"
        elif isinstance(s, Loop):
            yield f"{pad}loop {s.name}{flags} until {s.until.__doc__}, max {s.max_iterations}, {s.on_exhausted}"
            yield from describe(s.body, indent + 1)
        elif isinstance(s, Branch):
            on = s.on if isinstance(s.on, str) else s.on.__doc__
            yield f"{pad}branch {s.name}{flags} on {on}"
            for label, arm in s.arms():
                yield f"{pad}  case {label}:"
                yield from describe(arm, indent + 2)
        elif isinstance(s, Parallel):
            yield f"{pad}parallel {s.name}{flags} on_branch_failure={s.on_branch_failure}"
            for label, arm in s.branches.items():
                yield f"{pad}  branch {label}:"
                yield from describe(arm, indent + 2)
        elif isinstance(s, Map):
            yield f"{pad}map {s.name}{flags} over {s.over} item {s.item} result {s.result} into {s.into}"
            yield from describe(s.body, indent + 1)
        elif isinstance(s, Group):
            yield f"{pad}group {s.name}{flags}"
            yield from describe(s.steps, indent + 1)


@st.composite
def trees(
    draw: st.DrawFn, most_depth: int = 3, inline_chance: int = 3, fail_chance: int = 20
) -> tuple[Builder, list[Step]]:
    """A tree of depth up to `most_depth`; about one node in `inline_chance` is inline, one leaf in
    `fail_chance` always fails (or refuses), one in three others is flaky."""
    builder = Builder(draw, inline_chance, fail_chance)
    depth = draw(st.sampled_from([0, *([d for d in range(1, most_depth + 1) for _ in range(d)])]))  # deep trees
    return builder, builder.seq(depth, frozenset({*INT_KEYS, "ys"}), 1, 4)


def expanded_control(steps: Sequence[Step], in_fanout: bool = False) -> int:
    """How many loops, branches, expanded parallels and maps compile to several ops (not inside a one-op
    node)."""
    count = 0
    for s in steps:
        if runs_in_one_op(s, in_fanout=in_fanout):
            continue
        count += isinstance(s, Loop | Branch | Parallel | Map)
        count += sum(expanded_control(arm, in_fanout or isinstance(s, Map)) for _, arm in children(s))
    return count


@st.composite
def valid_cases(draw: st.DrawFn, inline_chance: int = 3, least_expanded: int = 0, fail_chance: int = 20) -> Case:
    """A valid pipeline and its inputs; at most MAX_OPS expanded ops, at least `least_expanded` expanded loops,
    branches or expanded parallels."""
    _, steps = draw(trees(inline_chance=inline_chance, fail_chance=fail_chance))
    assume(least_expanded <= expanded_control(steps) and expanded_ops(steps) <= MAX_OPS)
    assets = draw(st.lists(st.sampled_from(["a", "b", "ys"]), max_size=2, unique=True))
    if ASSETS_ONLY_WITHOUT_SILENT_NODES and silent(Pipeline("prop", context=Ctx, steps=steps)):
        assets = []
    inputs: dict[str, object] = {"x": draw(st.integers(0, 100))}
    inputs.update(draw(st.dictionaries(st.sampled_from(INT_KEYS), st.integers(0, 100), max_size=2)))
    if draw(st.booleans()):
        inputs["xs"] = draw(st.lists(st.integers(0, 20), max_size=3))
    pipeline = Pipeline("prop", context=Ctx, steps=steps, assets=assets)
    event(f"nodes: {sum(1 for _ in walk(steps, 'prop')) // 5 * 5}+")
    event(f"expanded ops: {expanded_ops(steps) // 10 * 10}+")
    note("\n".join(["pipeline:", *describe(steps, 1), f"assets={assets} inputs={inputs}"]))
    return pipeline, inputs


def silent(pipeline: Pipeline) -> bool:
    """Whether a control-flow node of the pipeline writes no key on any path."""
    return any(
        not isinstance(s, FunctionStep) and not flow_of_steps([s], pipeline.fields).may
        for _, s in walk(pipeline.steps, pipeline.name)
    )


def all_inline(pipeline: Pipeline) -> Pipeline:
    """The same tree in one inline group (one op, run by the in-process interpreter)."""
    return Pipeline(
        f"{pipeline.name}_inline",
        context=pipeline.context,
        steps=[Group("all", steps=pipeline.steps, inline=True)],
        assets=pipeline.assets,
    )


def no_findings(pipeline: Pipeline) -> Pipeline:
    assert [f.render() for f in validate(pipeline).findings] == []
    return pipeline


def expected_outcome(pipeline: Pipeline, inputs: dict[str, object]) -> tuple[BaseModel | RunFails, Attempts]:
    """What the reference predicts: the final context or the failure, and every step's calls and retries."""
    attempts = Attempts()
    reset_calls()
    try:
        outcome: BaseModel | RunFails = evaluate(pipeline, inputs, attempts)
    except RunFails as failure:
        outcome = failure
    assert CALLS == attempts.calls  # the reference calls each function as often as it says
    event(f"reference: {type(outcome).__name__ if isinstance(outcome, RunFails) else 'succeeds'}")
    event(f"reference: {'retries' if attempts.retried else 'no retries'}")
    return outcome, attempts


def modes(pipeline: Pipeline) -> dict[str, tuple[str, int]]:
    """Each leaf's (mode, max_retries)."""
    return {
        s.name: (getattr(s.fn, "mode", "ok"), s.retry.max_retries)
        for _, s in walk(pipeline.steps, pipeline.name)
        if isinstance(s, FunctionStep)
    }


def step_failure_named(error: str, pipeline: Pipeline) -> bool:
    """Whether `error` holds the own error of a leaf that always fails or refuses."""
    failing = {name for name, (mode, _) in modes(pipeline).items() if mode in ("always", "refuse")}
    return any(found in failing for found in STEP_FAILURE.findall(error))


class Retries:
    """Counts, per step name, the failed attempts tried again (the executor's reports)."""

    def __init__(self) -> None:
        self.retried: Counter[str] = Counter()

    def step_finished(self, record: StepRecord) -> None:
        pass

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None:
        self.retried[path.rsplit(":", 1)[1]] += 1


def control_nodes(pipeline: Pipeline) -> set[str]:
    return {s.name for _, s in walk(pipeline.steps, pipeline.name) if isinstance(s, Loop | Branch)}


def names(error: str) -> set[str]:
    """Every identifier-like word in an error (op names split at `__`, so `loop4__i2__s5` names `loop4`)."""
    return {part for word in re.findall(r"[A-Za-z0-9_]+", error) for part in word.split("__")}


# --- the reference evaluator stays independent ------------------------------------------------------------------


def test_reference_imports_nothing_from_the_adapter_or_runtime() -> None:
    tree = ast.parse(Path(reference.__file__).read_text())
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports in the reference evaluator"
            modules.append(node.module or "")
    ours = [m for m in modules if m.split(".")[0] == "flujo_dagster"]
    assert ours, modules
    assert all(m == "flujo_dagster.dsl" or m.startswith("flujo_dagster.dsl.") for m in ours), ours
    assert "importlib" not in modules and "__import__" not in Path(reference.__file__).read_text()
    # and not indirectly either: importing it loads neither the adapter, the runtime nor dagster
    code = "import json, sys, tests.reference; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "tests.reference" in loaded
    forbidden = ("flujo_dagster.adapter", "flujo_dagster.runtime", "dagster")
    assert not {m for m in loaded if m in forbidden or m.startswith(tuple(f"{f}." for f in forbidden))}


def test_reference_evaluator_follows_the_documented_semantics() -> None:
    """A hand-checked example, so that the reference itself is tested (not only compared)."""
    inc = step(name="inc", input_keys=["a"], output_keys=["a"])(lambda a: a + 1)
    double = step(name="double", output_keys=["b"])(lambda a: 2 * a)
    tens = step(name="tens", output_keys=["c"])(lambda it, a: 10 * it + a)
    pipeline = Pipeline(
        "semantics",
        context=Ctx,
        steps=[
            Loop("grow", body=[inc], until=lambda a: a >= 3, max_iterations=5),
            Branch("pick", on=lambda x: x % 2, cases={0: [double]}, default=[]),
            Parallel("both", branches={"p": [step(name="pc", output_keys=["c"])(lambda b: b + 1)], "q": []}),
            Map("each", over="xs", item="it", body=[tens], result="c", into="ys"),
        ],
    )
    assert evaluate(pipeline, {"x": 4}) == Ctx(x=4, a=3, b=6, c=7, ys=[13, 23, 33])
    assert evaluate(pipeline, {"x": 5, "a": 7}) == Ctx(x=5, a=8, b=0, c=1, ys=[18, 28, 38])
    with pytest.raises(ControlFailure) as failed:
        evaluate(pipeline >> Loop("never", body=[inc], until=lambda a: a < 0, max_iterations=2), {"x": 1})
    assert failed.value.nodes == ("never",)


def test_reference_evaluator_retries_as_documented() -> None:
    """Retries by hand: a flaky step succeeds within its retries, an error refusing retries fails at once, and a
    step out of retries fails with its last error."""
    flaky = step(name="a", retry=Retry(max_retries=2))(behaving(lambda x: x + 1, "a", ["x"], "flaky", 2))
    refuse = step(name="b", retry=Retry(max_retries=2))(behaving(lambda x: x, "b", ["x"], "refuse", 0))
    always = step(name="c", retry=Retry(max_retries=1))(behaving(lambda x: x, "c", ["x"], "always", 0))
    attempts = Attempts()
    reset_calls()
    assert evaluate(Pipeline("retrying", context=Ctx, steps=[flaky]), {"x": 1}, attempts) == Ctx(x=1, a=2)
    assert (attempts.calls, attempts.retried) == (Counter(a=3), Counter(a=2))
    for failing, calls, retried, error in (
        (refuse, 1, 0, "Refusal: refused b"),
        (always, 2, 1, "ValueError: always c"),
    ):
        attempts = Attempts()
        with pytest.raises(reference.StepFailure) as failed:
            evaluate(Pipeline("failing", context=Ctx, steps=[failing]), {"x": 1}, attempts)
        assert str(failed.value) == f"{failing.name}: {error}"
        assert (attempts.calls[failing.name], attempts.retried[failing.name]) == (calls, retried)


# --- valid pipelines --------------------------------------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    report_multiple_bugs=False,  # shrink one failure only: shrinking several took minutes
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=valid_cases())
def test_valid_pipelines_validate_and_interpret_like_the_reference(case: Case) -> None:
    """Fast (no Dagster): the in-process interpreter, as used by inline ops, agrees with the reference."""
    pipeline, inputs = case
    no_findings(pipeline)
    no_findings(all_inline(pipeline))
    expected, attempts = expected_outcome(pipeline, inputs)
    # as in an inline op: the interpreter gets only the keys the tree reads (by its flow) and the keys it may
    # write on some paths only (an op carries those through), and what it may write is merged back
    flow = flow_of_steps(pipeline.steps, pipeline.fields)
    start = dict(Ctx.model_validate(inputs))
    state = {k: start[k] for k in (*flow.reads, *(flow.may - flow.must))}
    retries = Retries()
    interpreter = Interpreter(fields=pipeline.fields, agents=None, reporter=retries)
    reset_calls()
    if isinstance(expected, ControlFailure):
        with pytest.raises(ControlFlowError) as raised:
            anyio.run(interpreter.run, pipeline.steps, state, pipeline.name)
        assert names(str(raised.value)) & set(expected.nodes), (str(raised.value), expected.nodes)
    elif isinstance(expected, RunFails):
        with pytest.raises(Exception) as failed:
            anyio.run(interpreter.run, pipeline.steps, state, pipeline.name)
        error = f"{type(failed.value).__name__}: {failed.value}"
        assert not isinstance(failed.value, ControlFlowError), error
        assert set(STEP_FAILURE.findall(error)) & set(expected.nodes), (error, expected.nodes)
    else:
        anyio.run(interpreter.run, pipeline.steps, state, pipeline.name)
        assert Ctx.model_validate(start | {k: state[k] for k in flow.may if k in state}) == expected
    # the interpreter alone runs in the reference's order, failed runs included
    assert (CALLS, retries.retried) == (attempts.calls, attempts.retried)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterInstance]:
    """One persistent SQLite instance for the module (hypothesis runs many examples per test function)."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


class ExecutorStuck(Exception):
    """Dagster's in-process executor has steps left to skip or abandon but nothing to run: it would spin forever
    (it handles pending skips and abandons only after running a step)."""


@contextmanager
def executor_cannot_spin() -> Iterator[None]:
    """Turn the in-process executor's endless spin into `ExecutorStuck`, raised when the block ends (a test must
    end; inside the run Dagster turns the error into a plain run failure, which would hide the spin)."""
    original = ActiveExecution.sleep_til_ready
    stuck: list[str] = []

    def sleep_til_ready(self: ActiveExecution) -> None:
        left = self._pending_skip or self._pending_abandon
        if left and not (self._executable or self._in_flight or self._pending_retry or self._waiting_to_retry):
            stuck.append(f"pending skips {self._pending_skip}, pending abandons {self._pending_abandon}")
            raise ExecutorStuck(stuck[-1])
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ActiveExecution, "sleep_til_ready", sleep_til_ready)
        yield
    if stuck:
        raise ExecutorStuck(stuck[0])


def retried_in(instance: DagsterInstance, run_id: str) -> Counter[str]:
    """Per step name, the failed attempts tried again, from the run's warnings."""
    found = (RETRIED.search(e.user_message) for e in instance.all_logs(run_id))
    return Counter(m.group(1) for m in found if m is not None)


def step_story(instance: DagsterInstance, run_id: str) -> str:
    """The run's step events in order (`step: EVENT [output]`), printed with an unexpected failure so a rare
    one can be diagnosed from the log alone."""
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        output = event.step_output_data.output_name if event.is_successful_output else ""
        lines.append(f"  {event.step_key}: {event.event_type_value} {output}".rstrip())
    return "\n".join(lines)


def check_run(
    form: Pipeline,
    inputs: dict[str, object],
    expected: BaseModel | RunFails,
    attempts: Attempts,
    instance: DagsterInstance,
) -> None:
    reset_calls()
    with executor_cannot_spin():
        result = run_pipeline(form, inputs, instance=instance, log_level="CRITICAL")
    retried = retried_in(instance, result.run_id)
    if not isinstance(expected, RunFails):
        assert result.success, f"{result.error}\nstep events:\n{step_story(instance, result.run_id)}"
        assert result.context == expected
        assert (CALLS, retried) == (attempts.calls, attempts.retried)
        return
    assert not result.success, f"expected a failure at {expected.nodes}, got {result.context!r}"
    assert result.error is not None and "Exceeded max_retries" not in result.error
    # sequentially the first failing node is expected.nodes; Dagster may run an independent later node first,
    # which fails too: the error must name one of the pipeline's loops or branches with its control-flow
    # error, or one of its failing steps with that step's own error
    control = CONTROL_FAILURE.search(result.error) and names(result.error) & control_nodes(form)
    assert control or step_failure_named(result.error, form), result.error
    for name, (mode, max_retries) in modes(form).items():  # every call that ran followed the policy
        if mode == "refuse":
            assert retried[name] == 0, (name, retried)
        elif mode == "always":
            runs = CALLS[name] // (max_retries + 1)
            assert (CALLS[name], retried[name]) == (runs * (max_retries + 1), runs * max_retries), name


@settings(
    max_examples=RUN_EXAMPLES,
    deadline=None,
    database=None,
    # no shrinking: each example costs Dagster runs (a shrink took minutes); the note prints the whole tree
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# mostly expanded (the inline form is run too); bigger trees, so fewer failing leaves: about half the runs succeed
@given(case=valid_cases(inline_chance=6, least_expanded=2, fail_chance=18))
def test_valid_pipelines_run_expanded_and_inline_to_the_reference_context(
    case: Case, instance: DagsterInstance
) -> None:
    pipeline, inputs = case
    expected, attempts = expected_outcome(pipeline, inputs)
    for form in (no_findings(pipeline), no_findings(all_inline(pipeline))):
        check_run(form, inputs, expected, attempts, instance)


# --- bugs found by the properties (minimal examples) ------------------------------------------------------------


def test_map_whose_body_does_not_write_its_defaulted_result_key(instance: DagsterInstance) -> None:
    body = [step(name="note_b", output_keys=["b"])(lambda it: it)]  # writes b; the result key a keeps its value
    pipeline = no_findings(
        Pipeline("map_result", context=Ctx, steps=[Map("each", over="xs", item="it", body=body, result="a", into="ys")])
    )
    expected = evaluate(pipeline, {"x": 0, "a": 5})
    assert expected == Ctx(x=0, a=5, ys=[5, 5, 5])
    result = run_pipeline(pipeline, {"x": 0, "a": 5}, instance=instance, log_level="CRITICAL")
    assert result.success, result.error
    assert result.context == expected


def test_assets_beside_a_node_that_writes_no_key(instance: DagsterInstance) -> None:
    pipeline = no_findings(
        Pipeline(
            "silent", context=Ctx, steps=[Group("nothing", steps=[], inline=True), writer("wa", "a")], assets=["a"]
        )
    )
    result = run_pipeline(pipeline, {"x": 1}, instance=instance, log_level="CRITICAL")
    assert result.success, result.error
    assert result.context == evaluate(pipeline, {"x": 1}) == Ctx(x=1, a=2)


def test_a_failed_run_ends(instance: DagsterInstance) -> None:
    """Dagster 1.13.28's in-process executor spins forever (the run never ends) when abandoning a step makes a
    gated step skippable and no step is left to run. The expanded loop (iteration 2 reads iteration 1's keys,
    gated by iteration 1's `next`) reached it after any failure; loop gates now wait for what the next
    iteration reads."""
    # the order matters: the bug needs the failure processed last
    first = step(name="first", output_keys=["c"])(lambda x: 1 // x)
    inner = Loop("inner", body=[step(name="s8", output_keys=["d"])(lambda: 1)], until=lambda d: True, max_iterations=1)
    s9 = step(name="s9", output_keys=["c"])(lambda c, d: c + d)
    outer = Loop("outer", body=[inner, s9], until=lambda x: True, max_iterations=2)
    pipeline = no_findings(Pipeline("stuck", context=Ctx, steps=[first, outer]))
    with executor_cannot_spin():
        result = run_pipeline(pipeline, {"x": 0}, instance=instance, log_level="CRITICAL")
    assert not result.success
    assert result.error is not None and "ZeroDivisionError" in result.error


def test_a_failed_run_ends_when_an_untaken_arm_reads_what_failed(instance: DagsterInstance) -> None:
    """The same spin through a branch: the router ran and took `other`; then `z_fail` fails, `z2` is abandoned,
    and `use` (the untaken arm, reading z2's key) became skippable with nothing left to run. Routers now wait
    for what their arms read."""
    chain = [
        step(name="a_sel", output_keys=["b"])(lambda x: 1),
        step(name="p1", output_keys=["a"])(lambda b: b),
        step(name="z_fail", output_keys=["c"])(lambda x, a: 1 // x),
        step(name="z2", output_keys=["it"])(lambda c: c),
    ]
    use = step(name="use", output_keys=["d"])(lambda it: it)
    other = step(name="other", output_keys=["d"])(lambda x: 2)
    route = Branch("a_route", on="b", cases={0: [use], 1: [other]})
    pipeline = no_findings(Pipeline("arm_stuck", context=Ctx, steps=[*chain, route]))
    with executor_cannot_spin():
        result = run_pipeline(pipeline, {"x": 0}, instance=instance, log_level="CRITICAL")
    assert not result.success
    assert result.error is not None and "ZeroDivisionError" in result.error
    with executor_cannot_spin():
        result = run_pipeline(pipeline, {"x": 1}, instance=instance, log_level="CRITICAL")
    assert result.success, result.error
    assert result.context == Ctx(x=1, b=1, a=1, c=1, it=1, d=2)


def test_a_step_failure_in_a_nested_parallel_is_ignored_like_any_branch_failure(instance: DagsterInstance) -> None:
    """The interpreter took a nested Parallel's (or Map's) `ParallelBranchError` for one of its own errors, which
    are never ignored, so an outer `on_branch_failure="ignore"` failed the run; it only wraps steps' own errors,
    and the reference ignores them. Found once generated leaves could fail."""
    failing = step(name="sf", output_keys=["a"])(behaving(lambda x: x, "sf", ["x"], "always", 0))
    inner = Parallel("inner", branches={"p": [failing], "q": [writer("sb", "b")]})
    items = Map(
        "each",
        over="xs",
        item="it",
        body=[step(name="sm", output_keys=["c"])(lambda it: 1 // (it - 2))],
        result="c",
        into="ys",
    )
    outer = Parallel(
        "outer", branches={"l": [inner], "m": [items], "r": [writer("sd", "d")]}, on_branch_failure="ignore"
    )
    pipeline = no_findings(Pipeline("nested_ignore", context=Ctx, steps=[outer]))
    expected = evaluate(pipeline, {"x": 1})
    assert expected == Ctx(x=1, d=2)  # both nested failures ignored, nothing from their branches
    for form in (pipeline, all_inline(pipeline)):
        result = run_pipeline(form, {"x": 1}, instance=instance, log_level="CRITICAL")
        assert result.success, result.error
        assert result.context == expected


# --- broken pipelines -------------------------------------------------------------------------------------------

Slot = tuple[str, Hashable]


def slots(node: Step) -> list[Slot]:
    if isinstance(node, Loop | Map):
        return [("body", None)]
    if isinstance(node, Group):
        return [("steps", None)]
    if isinstance(node, Branch):
        return [*(("case", v) for v in node.cases), *([("default", None)] if node.default is not None else [])]
    if isinstance(node, Parallel):
        return [("branch", label) for label in node.branches]
    return []


def child(node: Step, slot: Slot) -> tuple[Step, ...]:
    where, label = slot
    if isinstance(node, Loop | Map):
        return node.body
    if isinstance(node, Group):
        return node.steps
    if isinstance(node, Branch):
        arm = node.cases[label] if where == "case" else node.default
        assert arm is not None
        return arm
    assert isinstance(node, Parallel)
    return node.branches[str(label)]


def with_child(node: Step, slot: Slot, steps: Sequence[Step]) -> Step:
    """A copy of `node` whose child sequence at `slot` is `steps`."""
    where, label = slot
    if isinstance(node, Loop):
        return Loop(
            node.name,
            body=steps,
            until=node.until,
            max_iterations=node.max_iterations,
            on_exhausted=node.on_exhausted,
            inline=node.inline,
        )
    if isinstance(node, Map):
        return Map(
            node.name,
            over=node.over,
            item=node.item,
            body=steps,
            result=node.result,
            into=node.into,
            max_concurrency=node.max_concurrency,
            inline=node.inline,
        )
    if isinstance(node, Group):
        return Group(node.name, steps=steps, inline=node.inline)
    if isinstance(node, Branch):
        cases = {v: (steps if where == "case" and v == label else arm) for v, arm in node.cases.items()}
        default = steps if where == "default" else node.default
        return Branch(node.name, on=node.on, cases=cases, default=default, inline=node.inline)
    assert isinstance(node, Parallel)
    return Parallel(
        node.name,
        branches={k: (steps if k == label else arm) for k, arm in node.branches.items()},
        on_branch_failure=node.on_branch_failure,
        inline=node.inline,
    )


Path_ = tuple[tuple[int, Slot], ...]


def sequences(steps: Sequence[Step], at: Path_ = ()) -> Iterator[tuple[Path_, int]]:
    """Every step sequence in the tree: (path to it, its length)."""
    yield at, len(steps)
    for i, node in enumerate(steps):
        for slot in slots(node):
            yield from sequences(child(node, slot), (*at, (i, slot)))


def in_map(steps: Sequence[Step], at: Path_) -> bool:
    """Whether the sequence at `at` lies inside a Map's body."""
    for i, slot in at:
        node = steps[i]
        if isinstance(node, Map):
            return True
        steps = child(node, slot)
    return False


def insert(steps: Sequence[Step], at: Path_, position: int, new: Step) -> list[Step]:
    if not at:
        return [*steps[:position], new, *steps[position:]]
    (i, slot), rest = at[0], at[1:]
    node = steps[i]
    return [*steps[:i], with_child(node, slot, insert(child(node, slot), rest, position, new)), *steps[i + 1 :]]


def writer(name: str, key: str, reads: Sequence[str] = ("x",)) -> FunctionStep:
    return step(name=name, output_keys=[key])(affine(reads, [1] * len(reads), [key], [1]))


def as_text(a: int) -> str:
    """Annotated to return a str, but writes the int key `a` (V-TYPE)."""
    return str(a)


def reads_text(a: str) -> int:
    """Its parameter is annotated str, but key `a` holds an int (V-TYPE)."""
    return len(a)


def no_output(a: int) -> int:
    """Named like no key and given no output_keys (V-CTX3)."""
    return a


@st.composite
def broken_cases(draw: st.DrawFn) -> tuple[Pipeline, str, str]:
    """A valid tree with one defect inserted at a random place: (pipeline, expected rule code, a text the
    finding mentions)."""
    builder, steps = draw(trees(most_depth=2))
    defect = draw(
        st.sampled_from(
            [
                "read_before_write",
                "until_before_write",
                "on_before_write",
                "written_on_some_paths",
                "written_if_no_branch_fails",
                "duplicate_name",
                "bad_name",
                "parallel_conflict",
                "unknown_read",
                "unknown_write",
                "unknown_until",
                "unknown_map_key",
                "unknown_asset",
                "loop_without_iterations",
                "branch_without_arms",
                "parallel_op_ignore",
                "map_op_result_on_some_paths",
                "writes_not_inferred",
                "return_type",
                "parameter_type",
            ]
        )
    )
    places = list(sequences(steps))
    if defect in ("written_on_some_paths", "written_if_no_branch_fails"):
        # not inside a Map: what a Map's body writes is scoped to one item, so `z` would stay a run input
        places = [(at, length) for at, length in places if not in_map(steps, at)]
    at, length = draw(st.sampled_from(places))
    position = draw(st.integers(0, length))
    context: type[BaseModel] = Ctx
    assets: list[str] = []
    fresh = builder.name("bad")
    new: Step | None = None
    code, marker = "", ""
    if defect in ("read_before_write", "until_before_write", "on_before_write"):
        # `z` has no default and is written only by the last step: every read of it comes before that
        context, code, marker = Broken, "V-CTX1", "'z'"
        steps = [*steps, writer(builder.name("wz"), "z")]
        if defect == "read_before_write":
            new = writer(fresh, "a", reads=("z",))
        elif defect == "until_before_write":
            new = Loop(fresh, body=[writer(builder.name("s"), "a")], until=at_least("z", 1), max_iterations=2)
        else:
            new = Branch(fresh, on="z", cases={0: [writer(builder.name("s"), "a")]}, default=[])
    elif defect == "written_on_some_paths":
        context, code, marker = Broken, "V-CTX1", "'z'"
        # (with a default: without one, a value other than 0 fails the run, so every path that finishes writes z)
        arms = {0: [writer(builder.name("wz"), "z")]}
        default = [writer(builder.name("s"), "a")] if draw(st.booleans()) else []
        new = Branch(fresh, on=modulo("x", 2), cases=arms, default=default)
    elif defect == "written_if_no_branch_fails":
        context, code, marker = Broken, "V-CTX1", "'z'"
        new = Parallel(fresh, branches={"p": [writer(builder.name("wz"), "z")]}, on_branch_failure="ignore")
    elif defect == "duplicate_name":
        taken = sorted(s.name for _, s in walk(steps, "p"))
        code, marker = "V-NAME", "used more than once"
        new = writer(draw(st.sampled_from(taken)), "a")
    elif defect == "bad_name":
        bad = draw(st.sampled_from(["two__parts", "flujo_mine", "1st", "with-dash", "input", "class", "context"]))
        code, marker = "V-NAME", repr(bad)
        new = writer(bad, "a")
    elif defect == "parallel_conflict":
        key = draw(st.sampled_from(INT_KEYS))
        code, marker = "V-PAR1", repr(key)
        nested = Group(builder.name("g"), steps=[writer(builder.name("s"), key)])
        deep = Loop(builder.name("loop"), body=[nested], until=at_least("x", 0), max_iterations=1)
        new = Parallel(
            fresh,
            branches={"p": [writer(builder.name("s"), key)], "q": [draw(st.sampled_from([nested, deep]))]},
        )
    elif defect == "unknown_read":
        code, marker = "V-CTX2", "'aa'"
        new = writer(fresh, "b", reads=("aa",))
    elif defect == "unknown_write":
        code, marker = "V-CTX2", "'zz'"
        new = writer(fresh, "zz")
    elif defect == "unknown_until":
        code, marker = "V-CTX2", "'bb'"
        new = Loop(fresh, body=[writer(builder.name("s"), "a")], until=at_least("bb", 1), max_iterations=1)
    elif defect == "unknown_map_key":
        role = draw(st.sampled_from(["over", "item", "result", "into"]))
        keys = {"over": "xs", "item": "it", "result": "a", "into": "ys"} | {role: "nope"}
        code, marker = "V-CTX2", "'nope'"
        new = Map(fresh, body=[writer(builder.name("s"), "a")], **keys)
    elif defect == "unknown_asset":
        code, marker = "V-CTX2", "'assetx'"
        assets = ["assetx"]
    elif defect == "loop_without_iterations":
        code, marker = "V-FLOW", "max_iterations"
        body = [writer(builder.name("s"), "a")]
        new = Loop(fresh, body=body, until=at_least("a", 1), max_iterations=draw(st.integers(-2, 0)))
    elif defect == "branch_without_arms":
        code, marker = "V-FLOW", "no case and no default"
        new = Branch(fresh, on="x", cases={})
    elif defect == "parallel_op_ignore":
        code, marker = "V-FLOW", "inline=False"
        new = Parallel(
            fresh, branches={"p": [writer(builder.name("s"), "a")]}, inline=False, on_branch_failure="ignore"
        )
    elif defect == "map_op_result_on_some_paths":
        code, marker = "V-FLOW", "inline=False"
        body = [Branch(builder.name("br"), on="it", cases={1: [writer(builder.name("s"), "a")]}, default=[])]
        new = Map(fresh, over="xs", item="it", body=body, result="a", into="ys", inline=False)
    elif defect == "writes_not_inferred":
        code, marker = "V-CTX3", fresh
        new = step(name=fresh)(no_output)
    elif defect == "return_type":
        code, marker = "V-TYPE", "returns str"
        new = step(name=fresh, output_keys=["a"])(as_text)
    else:
        assert defect == "parameter_type"
        code, marker = "V-TYPE", "parameter 'a'"
        new = step(name=fresh, output_keys=["b"])(reads_text)
    if new is not None:
        steps = insert(steps, at, position, new)
    note("\n".join([f"defect {defect}, expected {code} mentioning {marker}:", *describe(steps, 1)]))
    return Pipeline("broken", context=context, steps=steps, assets=assets), code, marker


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    report_multiple_bugs=False,  # shrink one failure only: shrinking several took minutes
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=broken_cases())
def test_broken_pipelines_always_give_error_findings(case: tuple[Pipeline, str, str]) -> None:
    pipeline, code, marker = case
    report = validate(pipeline)  # never raises
    errors = [f.render() for f in report.errors]
    assert not report.ok
    assert any(f.code == code and marker in f.render() for f in report.errors), (code, marker, errors)
    with pytest.raises(ConfigurationError) as refused:
        build_definitions(pipelines=[pipeline])
    assert [f.render() for f in refused.value.findings] == errors
