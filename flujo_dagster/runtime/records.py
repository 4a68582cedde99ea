"""What the leaf executor and the interpreter report about the steps they run: one record per finished step,
and each failed attempt that will be tried again."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

__all__ = ["Reporter", "StepRecord"]


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """What one step did: for the per-step table in an inline op's metadata."""

    path: str
    kind: str
    status: str  # "ok", "failed", "ignored"
    duration_s: float
    attempts: int = 1
    model: str | None = None
    model_source: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0
    cost_usd: Decimal | None = None
    price_source: str | None = None
    error: str | None = None


class Reporter(Protocol):
    """Receives a record for every step as it finishes, and every failed attempt before it is tried again."""

    def step_finished(self, record: StepRecord) -> None: ...

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None: ...
