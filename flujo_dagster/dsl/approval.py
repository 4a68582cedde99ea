"""`Approval`: a human approval gate. Pure data; the adapter pauses a run at it through run tags."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from flujo_dagster.dsl.durations import optional_duration
from flujo_dagster.dsl.steps import Retry, Step, StepsLike, as_steps

__all__ = ["Approval", "ApprovalMode", "OnTimeout"]

ApprovalMode = Literal["park", "wait"]
OnTimeout = Literal["reject", "approve", "escalate"]


@dataclass(frozen=True, init=False)
class Approval(Step):
    """Show the keys `show` to a reviewer and go on only once they approve.

    Reads the shown keys and writes them again: approved edits (fields of `decision`, a pydantic model whose
    fields are shown keys) flow on as the keys' new values. Every step after the gate in its sequence runs only
    after the approval. With no decision yet the run parks (`mode="park"`, no worker held) and resumes by
    re-execution from failure once a decision is recorded; `mode="wait"` first polls the run's tags.
    A rejection fails the run with `ApprovalRejectedError`, unless `on_reject` names steps: then those run
    instead of the steps after the gate in its sequence (the shown keys keep their values from before the gate),
    and the run goes on after that sequence.
    """

    show: tuple[str, ...] = field(default=())
    decision: type[BaseModel] | None = None
    approvers: tuple[str, ...] | None = None
    quorum: int = 1
    requester_may_approve: bool = False
    timeout: timedelta | None = None
    on_timeout: OnTimeout = "reject"
    escalate_to: tuple[str, ...] = ()
    on_reject: tuple[Step, ...] = ()
    mode: ApprovalMode = "park"

    kind = "approval"

    def __init__(
        self,
        name: str,
        /,
        *,
        show: list[str] | tuple[str, ...],
        decision: type[BaseModel] | None = None,
        approvers: list[str] | tuple[str, ...] | None = None,
        quorum: int = 1,
        requester_may_approve: bool = False,
        timeout: timedelta | None = None,
        on_timeout: OnTimeout = "reject",
        escalate_to: list[str] | tuple[str, ...] = (),
        on_reject: StepsLike | None = None,
        mode: ApprovalMode = "park",
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "retry", Retry())
        object.__setattr__(self, "inline", False)
        object.__setattr__(self, "show", tuple(show))
        object.__setattr__(self, "decision", decision)
        object.__setattr__(self, "approvers", tuple(approvers) if approvers is not None else None)
        object.__setattr__(self, "quorum", quorum)
        object.__setattr__(self, "requester_may_approve", requester_may_approve)
        # its type here; its sign is validation rule HITL-POLICY-001
        object.__setattr__(self, "timeout", optional_duration(timeout, f"Approval {name!r} timeout", signed=True))
        object.__setattr__(self, "on_timeout", on_timeout)
        object.__setattr__(self, "escalate_to", tuple(escalate_to))
        object.__setattr__(self, "on_reject", as_steps(on_reject) if on_reject is not None else ())
        object.__setattr__(self, "mode", mode)
