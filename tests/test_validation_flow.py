"""Validation of control flow: for each rule a failing and a passing fixture, with the exact rendered findings.

V-CTX1 per path (branch arms, loop bodies on their first iteration, parallel branches left unwritten under
`ignore`, the end of the pipeline), V-CTX1/V-CTX2 for the keys `until` and `on` read, V-PAR1, V-FLOW.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from flujo_dagster import Pipeline, step, validate
from flujo_dagster.dsl import Branch, FunctionStep, Loop, Parallel, Step


class Plan(BaseModel):
    """`topic` is the input; `outline` and `verdict` have no default and are written by steps."""

    topic: str
    outline: str
    verdict: str
    draft: str = ""
    score: int = 0
    kind: str = ""
    left: int = 0
    right: int = 0


class LenientPlan(BaseModel):
    """Plan with a default for `verdict`."""

    topic: str
    outline: str
    verdict: str = "none"
    draft: str = ""
    score: int = 0
    kind: str = ""


def writes(name: str, key: str, reads: Sequence[str] = ("topic",)) -> FunctionStep:
    """A step `name` reading `reads` and writing `key` (validation never calls it)."""

    def fn(**values: object) -> Any:
        raise AssertionError("validation must not run steps")

    return step(name=name, input_keys=list(reads), output_keys=[key])(fn)


def rendered(pipeline: Pipeline) -> list[str]:
    """Every finding, rendered, in order: comparing the whole list means no extra finding slips by."""
    return [f.render() for f in validate(pipeline).findings]


def plan(*steps: Step, context: type[BaseModel] = Plan) -> Pipeline:
    return Pipeline("plans", context=context, steps=list(steps))


UNWRITTEN_VERDICT_AT_END = (
    "[V-CTX1] error at plans: key 'verdict' has no default and is not written on every path through the "
    "pipeline. Hint: give 'verdict' a default, or write it on every branch"
)


def ctx1(path: str, key: str, who: str = "") -> str:
    return (
        f"[V-CTX1] error at {path}: {who}reads key {key!r} before any step writes it, and it has no default. "
        f"Hint: write {key!r} in an earlier step, or give the field a default"
    )


# --- V-CTX1 through a branch -----------------------------------------------------------------------------------


def test_ctx1_key_written_in_one_arm_only_then_read_after_the_branch_fails() -> None:
    route = Branch(
        "route",
        on="kind",
        cases={"go": [writes("decide", "verdict")]},
        default=[writes("shrug", "score")],
    )
    pipeline = plan(writes("sketch", "outline"), route, writes("announce", "draft", reads=["verdict"]))
    assert rendered(pipeline) == [ctx1("plans > step:announce", "verdict"), UNWRITTEN_VERDICT_AT_END]


def test_ctx1_key_written_in_every_arm_is_live_after_the_branch() -> None:
    route = Branch(
        "route",
        on="kind",
        cases={"go": [writes("decide", "verdict")]},
        default=[writes("shrug", "score"), writes("settle", "verdict")],
    )
    pipeline = plan(writes("sketch", "outline"), route, writes("announce", "draft", reads=["verdict"]))
    assert rendered(pipeline) == []


def test_ctx1_without_a_default_arm_every_case_counts() -> None:
    # no match fails at run time, so a key every case writes is live after the branch
    route = Branch(
        "route",
        on="kind",
        cases={"go": [writes("decide", "verdict")], "stop": [writes("halt", "verdict")]},
    )
    pipeline = plan(writes("sketch", "outline"), route, writes("announce", "draft", reads=["verdict"]))
    assert rendered(pipeline) == []


def test_ctx1_read_inside_an_arm_of_a_key_the_same_arm_wrote_passes() -> None:
    route = Branch(
        "route",
        on="kind",
        cases={"go": [writes("decide", "verdict"), writes("announce", "draft", reads=["verdict"])]},
        default=[writes("settle", "verdict")],
    )
    assert rendered(plan(writes("sketch", "outline"), route)) == []


# --- V-CTX1 at the end of the pipeline -------------------------------------------------------------------------


def test_ctx1_end_of_pipeline_key_without_default_not_written_on_every_path_fails() -> None:
    route = Branch("route", on="kind", cases={"go": [writes("decide", "verdict")]}, default=[])
    assert rendered(plan(writes("sketch", "outline"), route)) == [UNWRITTEN_VERDICT_AT_END]


def test_ctx1_end_of_pipeline_key_with_a_default_passes() -> None:
    route = Branch("route", on="kind", cases={"go": [writes("decide", "verdict")]}, default=[])
    assert rendered(plan(writes("sketch", "outline"), route, context=LenientPlan)) == []


# --- V-CTX1 / V-CTX2 for the keys `until` and `on` read --------------------------------------------------------


def test_until_reading_a_key_written_only_after_the_loop_is_ctx1() -> None:
    loop = Loop(
        "refine",
        body=[writes("sketch", "outline")],
        until=lambda verdict: verdict == "ok",
        max_iterations=2,
    )
    pipeline = plan(loop, writes("decide", "verdict"))
    assert rendered(pipeline) == [ctx1("plans > loop:refine", "verdict", who="until ")]


def test_until_reading_an_unknown_key_is_ctx2() -> None:
    loop = Loop(
        "refine",
        body=[writes("sketch", "outline"), writes("rate", "score")],
        until=lambda scroe: scroe > 1,
        max_iterations=2,
    )
    pipeline = plan(loop, writes("decide", "verdict"))
    assert rendered(pipeline) == [
        "[V-CTX2] error at plans > loop:refine: until reads unknown key 'scroe': it is not a field of Plan. "
        "Hint: did you mean 'score'?"
    ]


def test_until_reading_body_keys_inputs_and_defaults_passes() -> None:
    loop = Loop(
        "refine",
        body=[writes("sketch", "outline"), writes("decide", "verdict")],
        until=lambda verdict, topic, score, outline: verdict == topic or score > len(outline),
        max_iterations=2,
    )
    assert rendered(plan(loop)) == []


def test_on_reading_a_key_written_only_after_the_branch_is_ctx1() -> None:
    route = Branch("route", on="verdict", cases={"ok": [writes("rate", "score")]}, default=[])
    pipeline = plan(writes("sketch", "outline"), route, writes("decide", "verdict"))
    assert rendered(pipeline) == [ctx1("plans > branch:route", "verdict", who="on ")]


def test_on_function_reading_a_key_written_only_after_the_branch_is_ctx1() -> None:
    route = Branch("route", on=lambda topic, verdict: topic == verdict, cases={True: [writes("rate", "score")]})
    pipeline = plan(writes("sketch", "outline"), route, writes("decide", "verdict"))
    assert rendered(pipeline) == [ctx1("plans > branch:route", "verdict", who="on ")]


def test_on_reading_unknown_keys_is_ctx2() -> None:
    by_name = Branch("route", on="kinnd", cases={"go": [writes("rate", "score")]}, default=[])
    by_function = Branch("check", on=lambda topik: topik, cases={"x": [writes("judge", "left")]}, default=[])
    pipeline = plan(writes("sketch", "outline"), by_name, by_function, writes("decide", "verdict"))
    assert rendered(pipeline) == [
        "[V-CTX2] error at plans > branch:route: on reads unknown key 'kinnd': it is not a field of Plan. "
        "Hint: did you mean 'kind'?",
        "[V-CTX2] error at plans > branch:check: on reads unknown key 'topik': it is not a field of Plan. "
        "Hint: did you mean 'topic'?",
    ]


def test_on_reading_inputs_defaults_and_written_keys_passes() -> None:
    by_name = Branch("route", on="kind", cases={"go": [writes("rate", "score")]}, default=[])
    by_function = Branch(
        "check", on=lambda topic, outline: topic in outline, cases={True: [writes("judge", "left")]}, default=[]
    )
    pipeline = plan(writes("sketch", "outline"), by_name, by_function, writes("decide", "verdict"))
    assert rendered(pipeline) == []


# --- V-CTX1 in loop bodies, and after loops --------------------------------------------------------------------


def test_loop_body_reading_a_key_written_later_in_the_same_body_is_ctx1() -> None:
    # on iteration 1 nothing has written `outline` yet when `expand` reads it
    loop = Loop(
        "refine",
        body=[writes("expand", "draft", reads=["outline"]), writes("sketch", "outline")],
        until=lambda draft: len(draft) > 3,
        max_iterations=3,
    )
    pipeline = plan(loop, writes("decide", "verdict"))
    assert rendered(pipeline) == [ctx1("plans > loop:refine > step:expand", "outline")]


def test_loop_body_reading_a_key_written_before_the_loop_passes() -> None:
    loop = Loop(
        "refine",
        body=[writes("expand", "draft", reads=["outline"]), writes("sketch", "outline")],
        until=lambda draft: len(draft) > 3,
        max_iterations=3,
    )
    pipeline = plan(writes("first_outline", "outline"), loop, writes("decide", "verdict"))
    assert rendered(pipeline) == []


def test_loop_written_keys_are_live_after_the_loop() -> None:
    # the body runs at least once, so `outline` and `verdict` (no defaults) are certain after the loop
    loop = Loop(
        "refine",
        body=[writes("sketch", "outline"), writes("decide", "verdict", reads=["outline"])],
        until=lambda verdict: verdict == "ok",
        max_iterations=3,
        on_exhausted="continue",
    )
    pipeline = plan(loop, writes("publish", "draft", reads=["outline", "verdict"]))
    assert rendered(pipeline) == []


def test_keys_written_in_one_arm_of_a_branch_inside_a_loop_body_are_not_live_after_the_loop() -> None:
    inner = Branch("route", on="kind", cases={"go": [writes("decide", "verdict")]}, default=[])
    loop = Loop("refine", body=[writes("sketch", "outline"), inner], until=lambda outline: True, max_iterations=2)
    pipeline = plan(loop, writes("publish", "draft", reads=["verdict"]))
    assert rendered(pipeline) == [ctx1("plans > step:publish", "verdict"), UNWRITTEN_VERDICT_AT_END]


# --- Parallel: V-PAR1, and keys after `ignore` -----------------------------------------------------------------


def test_par1_two_branches_writing_one_key_fails() -> None:
    fan = Parallel(
        "fan",
        branches={"l": [writes("rate_l", "score")], "r": [writes("rate_r", "score")], "x": [writes("side", "left")]},
    )
    pipeline = plan(writes("sketch", "outline"), fan, writes("decide", "verdict"))
    assert rendered(pipeline) == [
        "[V-PAR1] error at plans > parallel:fan: branches 'l', 'r' all write key 'score'; parallel branches must "
        "write different keys. Hint: write a separate key in each branch and combine them in a step after the "
        "Parallel"
    ]


def test_par1_counts_keys_a_branch_may_write_on_some_path() -> None:
    maybe = Branch("maybe", on="kind", cases={"go": [writes("rate_r", "score")]}, default=[])
    fan = Parallel("fan", branches={"l": [writes("rate_l", "score")], "r": [maybe]})
    pipeline = plan(writes("sketch", "outline"), fan, writes("decide", "verdict"))
    assert [f.code for f in validate(pipeline).findings] == ["V-PAR1"]


def test_par1_branches_writing_different_keys_pass() -> None:
    fan = Parallel("fan", branches={"l": [writes("rate_l", "left")], "r": [writes("rate_r", "right")]})
    pipeline = plan(writes("sketch", "outline"), fan, writes("decide", "verdict", reads=["left", "right"]))
    assert rendered(pipeline) == []


def test_parallel_branches_see_only_the_keys_from_before_the_parallel() -> None:
    fan = Parallel(
        "fan",
        branches={"l": [writes("sketch", "outline")], "r": [writes("rate", "score", reads=["outline"])]},
    )
    pipeline = plan(fan, writes("decide", "verdict"))
    assert rendered(pipeline) == [ctx1("plans > parallel:fan > step:rate", "outline")]


def test_keys_of_a_parallel_with_ignore_are_not_certain_after_it() -> None:
    def pipeline(on_branch_failure: str) -> Pipeline:
        fan = Parallel(
            "fan",
            branches={"l": [writes("sketch", "outline")], "r": [writes("decide", "verdict")]},
            on_branch_failure=on_branch_failure,  # type: ignore[arg-type]
        )
        return plan(fan, writes("publish", "draft", reads=["outline", "verdict"]))

    assert rendered(pipeline("fail")) == []
    assert rendered(pipeline("ignore")) == [
        ctx1("plans > step:publish", "outline"),
        ctx1("plans > step:publish", "verdict"),
        "[V-CTX1] error at plans: key 'outline' has no default and is not written on every path through the "
        "pipeline. Hint: give 'outline' a default, or write it on every branch",
        UNWRITTEN_VERDICT_AT_END,
    ]


# --- V-FLOW ----------------------------------------------------------------------------------------------------


def test_flow_loop_with_max_iterations_below_one_fails() -> None:
    loop = Loop("refine", body=[writes("sketch", "outline")], until=lambda outline: True, max_iterations=0)
    assert rendered(plan(loop, writes("decide", "verdict"))) == [
        "[V-FLOW] error at plans > loop:refine: max_iterations is 0; a loop runs its body at least once. "
        "Hint: set max_iterations to 1 or more"
    ]


def test_flow_loop_with_one_iteration_passes() -> None:
    loop = Loop("refine", body=[writes("sketch", "outline")], until=lambda outline: True, max_iterations=1)
    assert rendered(plan(loop, writes("decide", "verdict"))) == []


def test_flow_branch_without_cases_or_default_fails() -> None:
    route = Branch("route", on="kind", cases={})
    assert rendered(plan(writes("sketch", "outline"), route, writes("decide", "verdict"))) == [
        "[V-FLOW] error at plans > branch:route: branch has no case and no default. Hint: give it "
        "cases={value: [steps]} and, if every value must be handled, a default"
    ]


def test_flow_branch_with_only_a_default_passes() -> None:
    route = Branch("route", on="kind", cases={}, default=[writes("rate", "score")])
    assert rendered(plan(writes("sketch", "outline"), route, writes("decide", "verdict"))) == []


def test_flow_parallel_ignore_fails_unless_run_in_one_op() -> None:
    def pipeline(**options: object) -> Pipeline:
        fan = Parallel(
            "fan",
            branches={"l": [writes("rate_l", "left")], "r": [writes("rate_r", "right")]},
            on_branch_failure="ignore",
            **options,  # type: ignore[arg-type]
        )
        return plan(writes("sketch", "outline"), fan, writes("decide", "verdict"))

    assert rendered(pipeline(inline=False)) == [
        "[V-FLOW] error at plans > parallel:fan: on_branch_failure='ignore' is supported for parallel branches run "
        "in one op, not with inline=False. Hint: use inline=True (the default), or on_branch_failure='fail'"
    ]
    assert rendered(pipeline(inline=True)) == []
    assert rendered(pipeline()) == []
