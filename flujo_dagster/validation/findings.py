"""Findings and the validation report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from flujo_dagster.errors import ConfigurationError, PricingNotConfiguredError

__all__ = ["Finding", "Severity", "ValidationReport"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One problem found in a pipeline: rule code, severity, the pipeline it belongs to, step path, what is
    wrong, what to do. `str(finding)` is its one-line form, `[CODE] error at path: message Hint: hint`."""

    code: str
    severity: Severity
    pipeline: str
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"[{self.code}] {self.severity} at {self.path}: {self.message}"
        return f"{text} Hint: {self.hint}" if self.hint else text

    def render(self) -> str:
        """`str(finding)`: the one-line form."""
        return str(self)


@dataclass(frozen=True)
class ValidationReport:
    """Every finding for one or more pipelines. `str(report)` lists them, one a line, then a count line."""

    findings: tuple[Finding, ...] = ()

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> ValidationReport:
        """A report over `findings`, in the order found."""
        return cls(tuple(findings))

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings with severity `error`."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings with severity `warning`."""
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def ok(self) -> bool:
        """True when there is no error finding."""
        return not self.errors

    @property
    def invalid_pipelines(self) -> tuple[str, ...]:
        """The names of the pipelines with an error finding, in the order first found."""
        return tuple(dict.fromkeys(f.pipeline for f in self.errors))

    def __add__(self, other: ValidationReport) -> ValidationReport:
        return ValidationReport((*self.findings, *other.findings))

    def __str__(self) -> str:
        lines = [str(f) for f in self.findings]
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)

    def render(self) -> str:
        """`str(report)`: every finding, one a line, then a count."""
        return str(self)

    def raise_for_errors(self) -> None:
        """Raise `ConfigurationError` listing every error finding, if there is any: `PricingNotConfiguredError`
        (a `ConfigurationError`) when one of them is a model without a price (PRICE-001)."""
        if self.errors:
            body = "\n".join(f"  {f}" for f in self.errors)
            unpriced = any(f.code == "PRICE-001" for f in self.errors)
            raise (PricingNotConfiguredError if unpriced else ConfigurationError)(
                f"flujo_dagster found {len(self.errors)} error(s) in the pipeline definitions:\n{body}",
                self.errors,
            )
