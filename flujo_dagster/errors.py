"""Errors raised by flujo_dagster. Every message says what was wrong, where, and what to do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flujo_dagster.validation.findings import Finding

__all__ = [
    "ApprovalError",
    "ApprovalRejectedError",
    "ConfigurationError",
    "ControlFlowError",
    "FlujoDagsterError",
    "ParallelBranchError",
    "PricingNotConfiguredError",
    "RunInputsError",
    "StepOutputError",
    "StepTimeoutError",
    "StorageError",
    "UsageLimitExceededError",
]


class FlujoDagsterError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(FlujoDagsterError):
    """A pipeline or its configuration is invalid; raised when the definitions load.

    `findings` holds every finding that caused it (not just the first).
    """

    def __init__(self, message: str, findings: Sequence[Finding] = ()) -> None:
        super().__init__(message)
        self.findings: tuple[Finding, ...] = tuple(findings)


class RunInputsError(FlujoDagsterError, ValueError):
    """A run's inputs do not validate as the pipeline's context model; raised before any step runs.

    `problems` holds one `field: what is wrong` line per bad, missing or unknown input; the pydantic
    `ValidationError` is its `__cause__`.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems)


class PricingNotConfiguredError(ConfigurationError):
    """A model has no known price (rule PRICE-001)."""


class UsageLimitExceededError(FlujoDagsterError):
    """A budget would be, or was, exceeded."""


class ApprovalRejectedError(FlujoDagsterError):
    """A human rejected an approval gate."""


class ApprovalError(FlujoDagsterError):
    """A decision given for an approval gate is malformed or not allowed."""


class StorageError(FlujoDagsterError):
    """A stored value cannot be read back: names the run, step, key and file."""


class StepOutputError(FlujoDagsterError):
    """A step returned a value that does not fit the keys it writes."""


class StepTimeoutError(TimeoutError):
    """A step did not finish within its `timeout`. Not a `FlujoDagsterError`: like any error of a step's own,
    a timeout is retried when the step has retries."""


class ControlFlowError(FlujoDagsterError):
    """A loop ran out of iterations, or no branch case matched."""


class ParallelBranchError(FlujoDagsterError):
    """One or more branches of a Parallel failed (the others finished first)."""
