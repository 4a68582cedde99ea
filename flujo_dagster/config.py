"""Configuration read in one place: `[tool.flujo_dagster]` of the nearest pyproject.toml (from the working
directory up), merged with `build_definitions` arguments (which win)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from flujo_dagster.errors import ConfigurationError
from flujo_dagster.pricing.prices import Price, prices_from_table

__all__ = ["find_pyproject", "pyproject_prices"]


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in `start` (the working directory by default) or a parent directory."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_prices(path: Path | None) -> dict[str, Price]:
    """Price overrides from `[tool.flujo_dagster.pricing]` of `path` (none when the file or table is absent)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read [tool.flujo_dagster.pricing]: {exc}") from exc
    table = data.get("tool", {}).get("flujo_dagster", {}).get("pricing", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{path}: [tool.flujo_dagster.pricing] must be a table of models")
    return prices_from_table(table, source=f"{path} [tool.flujo_dagster.pricing]")
