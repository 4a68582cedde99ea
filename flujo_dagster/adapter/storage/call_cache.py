"""Which call cache a run's agent steps use (resource `call_cache`): by default the Dagster instance's own, in a
SQLite file beside the budget ledger's or, when the instance keeps its runs in PostgreSQL, in tables there."""

from __future__ import annotations

import threading
from typing import cast

from dagster import DagsterInstance

from flujo_dagster.adapter.storage.call_cache_sql import SqliteCallCache
from flujo_dagster.adapter.storage.instance_db import load_postgres, shared_place
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import CALL_CACHE_KEY
from flujo_dagster.runtime.cache import CallCache

__all__ = ["CALL_CACHE_KEY", "InstanceCallCache", "call_cache_of"]


class InstanceCallCache:
    """The default `call_cache` resource: the call cache of the Dagster instance the run is on.

    A SQLite file `<instance storage directory>/flujo/call_cache.sqlite` (shared by every process on the
    machine), or, when the instance keeps its runs in PostgreSQL, the tables `flujo_call_cache` and
    `flujo_call_cache_claims` in that database (shared by every machine): see `instance_db.shared_place`. One
    store object per location and process.
    """

    _lock = threading.Lock()
    _open: dict[str, CallCache] = {}

    def for_instance(self, instance: DagsterInstance) -> CallCache:
        """The call cache of `instance`."""
        place = shared_place(instance, "call_cache.sqlite")
        with self._lock:
            store = self._open.get(place.where)
            if store is None:
                store = _postgres(place.where) if place.postgres else SqliteCallCache(place.where)
                self._open[place.where] = store
        return store


def _postgres(url: str) -> CallCache:
    """The PostgreSQL call cache at `url` (the instance's database)."""
    made = load_postgres(
        "flujo_dagster.adapter.storage.call_cache_postgres", "PostgresCallCache", url, what="the agent-call cache"
    )
    return cast("CallCache", made)


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
