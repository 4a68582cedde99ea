"""`ApprovalSettings`: the deployment's rules for approval decisions (resource `approval_settings`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from flujo_dagster.names import APPROVAL_SETTINGS_KEY
from flujo_dagster.runtime.approvals import SECRET_ENV

__all__ = ["APPROVAL_SETTINGS_KEY", "ApprovalSettings"]


@dataclass(frozen=True, kw_only=True)
class ApprovalSettings:
    """How approval gates trust decisions. With `require_signed_decisions=True` a decision counts only when it
    carries an HMAC made with the secret in environment variable `secret_env` (the approvers and the code
    location hold it; it is read where it is used and never stored in config, tags, metadata or logs)."""

    require_signed_decisions: bool = False
    secret_env: str = SECRET_ENV

    def secret(self) -> str | None:
        """The signing secret from the environment, if set."""
        return os.environ.get(self.secret_env) or None
