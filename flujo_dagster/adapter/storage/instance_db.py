"""Where the Dagster instance keeps flujo's shared tables (the budget ledger, the agent-call cache).

When the instance keeps its runs in PostgreSQL (dagster-postgres), in that same database, however the instance
reaches it: `storage: postgres:` or the legacy `run_storage:` key, a `postgres_url` or `postgres_db` pieces
(with a `scheme` such as `postgresql+psycopg2`). Otherwise a SQLite file `<instance storage directory>/flujo/<name>`,
shared by every process on the machine."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance

from flujo_dagster.errors import ConfigurationError
from flujo_dagster.pricing.ledger import libpq_url

__all__ = ["SharedPlace", "load_postgres", "shared_place"]


@dataclass(frozen=True)
class SharedPlace:
    """Where one of flujo's shared stores lives: a libpq URL (`postgres`) or a SQLite file path."""

    where: str
    postgres: bool


def shared_place(instance: DagsterInstance, sqlite_name: str) -> SharedPlace:
    """Where `instance` keeps the store whose SQLite file is named `sqlite_name`: its run storage's PostgreSQL
    database when it has one, else `<storage directory>/flujo/<sqlite_name>`."""
    url = getattr(instance.run_storage, "postgres_url", None)
    if isinstance(url, str):
        return SharedPlace(libpq_url(url), postgres=True)
    return SharedPlace(str(Path(instance.storage_directory()) / "flujo" / sqlite_name), postgres=False)


def load_postgres(module: str, name: str, url: str, *, what: str) -> object:
    """`module.name(url)`, the PostgreSQL backend of `what` (e.g. "the budget ledger"): its driver comes with the
    `postgres` extra, so the module is imported only by who uses it."""
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"the Dagster instance keeps its runs in PostgreSQL, so {what} is kept there too, but its driver is "
            f"missing ({exc}); install flujo-dagster[postgres]"
        ) from exc
    made: object = getattr(loaded, name)(url)
    return made
