"""Which call cache a run's agent steps use (resource `call_cache`): by default the Dagster instance's own, in a
SQLite file beside the budget ledger's or, when the instance keeps its runs in PostgreSQL, in tables there."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from dagster import DagsterInstance

from flujo_dagster.adapter.storage.call_cache_sql import SqliteCallCache
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import CALL_CACHE_KEY
from flujo_dagster.runtime.cache import CallCache

__all__ = ["CALL_CACHE_KEY", "InstanceCallCache", "call_cache_of"]


class InstanceCallCache:
    """The default `call_cache` resource: the call cache of the Dagster instance the run is on.

    A SQLite file `<instance storage directory>/flujo/call_cache.sqlite` (shared by every process on the
    machine), or, when the instance keeps its runs in PostgreSQL, the tables `flujo_call_cache` and
    `flujo_call_cache_claims` in that database (shared by every machine). One store object per location and
    process.
    """

    _lock = threading.Lock()
    _open: dict[str, CallCache] = {}

    def for_instance(self, instance: DagsterInstance) -> CallCache:
        """The call cache of `instance`."""
        url = getattr(instance.run_storage, "postgres_url", None)
        where = url if isinstance(url, str) else str(Path(instance.storage_directory()) / "flujo" / "call_cache.sqlite")
        with self._lock:
            store = self._open.get(where)
            if store is None:
                store = _postgres(where) if isinstance(url, str) else SqliteCallCache(where)
                self._open[where] = store
        return store


def _postgres(url: str) -> CallCache:
    """A PostgreSQL call cache; its driver comes with the `postgres` extra, loaded only by who uses it."""
    try:
        module = importlib.import_module("flujo_dagster.adapter.storage.call_cache_postgres")
    except ImportError as exc:
        raise ConfigurationError(
            f"the Dagster instance keeps its runs in PostgreSQL, so the call cache is kept there too, but its driver "
            f"is missing ({exc}); install flujo-dagster[postgres]"
        ) from exc
    store: CallCache = module.PostgresCallCache(url)
    return store


def call_cache_of(resource: object, instance: DagsterInstance) -> CallCache:
    """The call cache a run's agent steps use, from the `call_cache` resource (an `InstanceCallCache` or any
    `CallCache`: `SqliteCallCache`, `PostgresCallCache`, your own)."""
    if isinstance(resource, InstanceCallCache):
        return resource.for_instance(instance)
    if isinstance(resource, CallCache):
        return resource
    raise ConfigurationError(
        f"resource {CALL_CACHE_KEY!r} must be an InstanceCallCache or a CallCache (SqliteCallCache, "
        f"PostgresCallCache), got {type(resource).__name__}"
    )
