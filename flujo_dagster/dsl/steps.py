"""Step nodes of the DSL: function steps, agent steps, sequences. Pure data; constructing runs nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, TypeAlias, TypeVar

from flujo_dagster.dsl.budget import Budget, is_token_count
from flujo_dagster.dsl.cache import Cache
from flujo_dagster.dsl.durations import duration, optional_duration
from flujo_dagster.interfaces import AgentLike, ModelLike
from flujo_dagster.names import POOL_PREFIX

__all__ = [
    "AgentStep",
    "FunctionStep",
    "Retry",
    "Step",
    "StepSequence",
    "StepsLike",
    "as_steps",
]


@dataclass(frozen=True, kw_only=True)
class Retry:
    """How often a failed step is tried again, and how long to wait between tries.

    Applied inside the step's op, expanded or inline alike; errors that another attempt cannot fix are never
    retried (docs/control-flow.md, "Retries"). `max_retries=0` (the default) means one attempt only. `delay` is
    the wait before the first retry, grown by `backoff`.
    """

    max_retries: int = 0
    delay: timedelta = timedelta(seconds=1)
    backoff: Literal["constant", "linear", "exponential"] = "exponential"

    def __post_init__(self) -> None:
        duration(self.delay, "Retry delay")


@dataclass(frozen=True, kw_only=True)
class Step:
    """Base of every DSL node. The name is unique within a pipeline and names the step's op. `timeout` bounds
    one attempt of a function or agent step."""

    name: str
    retry: Retry = field(default_factory=Retry)
    timeout: timedelta | None = None
    inline: bool = False

    kind = "step"

    def __post_init__(self) -> None:
        optional_duration(self.timeout, f"step {self.name!r} timeout", positive=True)

    def __rshift__(self, other: StepsLike) -> StepSequence:
        return StepSequence((self, *as_steps(other)))

    def __rrshift__(self, other: StepsLike) -> StepSequence:
        return StepSequence((*as_steps(other), self))


@dataclass(frozen=True, kw_only=True)
class FunctionStep(Step):
    """A step that calls a Python function (sync or async).

    Reads the keys named by its parameters (or `input_keys`); writes the key named like the step, or the
    fields of the model it returns when they are all keys (or `output_keys`). Parameters annotated with a
    Dagster resource class or execution context, or named in `resources`, are filled by Dagster instead.
    """

    fn: Callable[..., object]
    input_keys: tuple[str, ...] | None = None
    output_keys: tuple[str, ...] | None = None
    resources: tuple[tuple[str, str], ...] = ()
    """(parameter, resource key) pairs: parameters filled with a Dagster resource, whatever their annotation."""

    kind = "step"

    def __call__(self, *args: object, **kwargs: object) -> object:
        """Call the wrapped function directly (handy in unit tests of the function itself)."""
        return self.fn(*args, **kwargs)


@dataclass(frozen=True, kw_only=True)
class AgentStep(Step):
    """A step that runs a pydantic-ai agent on a prompt built from context keys.

    `prompt` is a `str.format` template whose fields are the keys read, or a callable whose parameters are
    the keys read. The agent's output is written to `output_key` (default: the key named like the step).
    `deps`, when given, is called before each agent run (its parameters are keys, resources or the execution
    context, as a function step's) and its result is the run's pydantic-ai `deps`; `resources` declares its
    parameters filled by resource key.
    """

    agent: AgentLike | None
    prompt: str | Callable[..., str]
    output_key: str | None = None
    model: str | ModelLike | None = None
    model_settings: Mapping[str, object] | None = None
    budget: Budget | None = None
    pool: str | None = None
    deps: Callable[..., object] | None = None
    resources: tuple[tuple[str, str], ...] = ()
    cache: Cache | bool | None = None
    """How its model requests are cached (`Cache`), `False` for fresh answers, None for the pipeline's policy."""

    kind = "agent"

    def pool_name(self) -> str | None:
        """The Dagster concurrency pool of the step's op: `pool`, else `flujo/<provider>` of its model."""
        if self.pool is not None:
            return self.pool
        model = self.model_id()
        return f"{POOL_PREFIX}{model.partition(':')[0]}" if model and ":" in model else None

    def max_tokens_setting(self) -> object:
        """`max_tokens` as given: in the step's model settings, else in the agent's own (None when neither sets it)."""
        for settings in (self.model_settings, getattr(self.agent, "model_settings", None)):
            value = settings.get("max_tokens") if isinstance(settings, Mapping) else None
            if value is not None:
                return value
        return None

    def max_tokens(self) -> int | None:
        """`max_tokens` from the step's model settings, else from the agent's own, when it is a usable limit (an
        int from 1 to 2**62 - 1; validation reports any other value as BUDGET-004)."""
        value = self.max_tokens_setting()
        return value if isinstance(value, int) and is_token_count(value) and value >= 1 else None

    def model_id(self) -> str | None:
        """The `provider:model` this step runs on when nothing overrides it, or None if unknown."""
        chosen: object = self.model if self.model is not None else getattr(self.agent, "model", None)
        return model_id_of(chosen)


def model_id_of(model: object) -> str | None:
    """`provider:model` for a model string or model object; None when there is no model."""
    if model is None:
        return None
    if isinstance(model, str):
        return model
    if isinstance(model, ModelLike):
        return f"{model.system}:{model.model_name}"
    return None


@dataclass(frozen=True)
class StepSequence:
    """An ordered run of steps, made with `a >> b`."""

    steps: tuple[Step, ...]

    def __rshift__(self, other: StepsLike) -> StepSequence:
        return StepSequence((*self.steps, *as_steps(other)))

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


StepsLike: TypeAlias = Step | StepSequence | Iterable[Step]
T = TypeVar("T")


def remembered(step: Step, slot: str, fields: Mapping[str, object], compute: Callable[[], T]) -> T:
    """`compute()`, remembered on the (frozen) step under `slot` for this `fields` object, so that big
    pipelines analyse each step once."""
    cached = step.__dict__.get(slot)
    if cached is not None and cached[0] is fields:
        value: T = cached[1]
        return value
    value = compute()
    object.__setattr__(step, slot, (fields, value))
    return value


def as_steps(value: StepsLike) -> tuple[Step, ...]:
    """Normalise a step, a sequence or an iterable of steps to a tuple of steps."""
    if isinstance(value, Step):
        return (value,)
    if isinstance(value, StepSequence):
        return value.steps
    steps = tuple(value)
    for item in steps:
        if not isinstance(item, Step):
            raise TypeError(f"expected a flujo_dagster step, got {type(item).__name__}: {item!r}")
    return steps
