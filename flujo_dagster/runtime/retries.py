"""The retry policy of leaf steps, the same on both engines (expanded ops and the in-process interpreter).

A failed attempt is tried again, up to `Retry.max_retries` times, unless its error says that another attempt
cannot help: a value of the wrong type (`StepOutputError`), configuration and pricing errors
(`ConfigurationError`, `PricingNotConfiguredError`), a budget refusal (`UsageLimitExceededError`), approval
errors, control-flow errors, and any error whose `allow_retries` is False (a user's
`dagster.Failure(allow_retries=False)`, recognised by that attribute: the runtime does not import Dagster).
"""

from __future__ import annotations

from flujo_dagster.dsl.steps import Retry
from flujo_dagster.errors import (
    ApprovalError,
    ApprovalRejectedError,
    ConfigurationError,
    ControlFlowError,
    StepOutputError,
    UsageLimitExceededError,
)

__all__ = ["NEVER_RETRIED", "is_retried", "retry_delay"]

NEVER_RETRIED: tuple[type[Exception], ...] = (
    StepOutputError,
    ConfigurationError,  # PricingNotConfiguredError too
    UsageLimitExceededError,
    ApprovalError,
    ApprovalRejectedError,
    ControlFlowError,
)
"""Our errors that fail a step on the attempt that raised them."""


def is_retried(error: Exception) -> bool:
    """Whether an attempt that raised `error` is tried again (when the step has retries left)."""
    return not isinstance(error, NEVER_RETRIED) and getattr(error, "allow_retries", True) is not False


def retry_delay(retry: Retry, failed: int) -> float:
    """Seconds to wait after failed attempt `failed` (1-based): `delay` each time (constant), `delay * n`
    (linear) or `delay * 2 ** (n - 1)` (exponential)."""
    base = retry.delay.total_seconds()
    if retry.backoff == "exponential":
        return float(base * 2 ** (failed - 1))
    if retry.backoff == "linear":
        return float(base * failed)
    return float(base)
