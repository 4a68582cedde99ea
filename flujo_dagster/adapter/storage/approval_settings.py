"""`ApprovalSettings`: the deployment's rules for approval decisions (resource `approval_settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from flujo_dagster.config import DECISION_SECRET_ENV, decision_secret
from flujo_dagster.names import APPROVAL_SETTINGS_KEY

__all__ = ["APPROVAL_SETTINGS_KEY", "ApprovalSettings"]


@dataclass(frozen=True, kw_only=True)
class ApprovalSettings:
    """How approval gates trust decisions. With `require_signed_decisions=True` a decision counts only when it
    carries an HMAC made with the secret in environment variable `secret_env` (the approvers and the code
    location hold it; it is read where it is used and never stored in config, tags, metadata or logs).

    A gate with `requester_may_approve=False` counts no decision while the requester is unknown (no
    `dagster/user` tag on the run that chose the inputs: Dagster OSS never sets it); `allow_unknown_requester=True`
    accepts, for the deployment, that the rule cannot be enforced there and counts decisions anyway."""

    require_signed_decisions: bool = False
    secret_env: str = DECISION_SECRET_ENV
    allow_unknown_requester: bool = False

    def secret(self) -> str | None:
        """The signing secret from the environment, if set."""
        return decision_secret(self.secret_env)
