"""Run ids as people type them: the full id, or the short prefix the Dagster UI shows (its first 8 characters),
resolved against the instance; an ambiguous prefix is refused with the runs it matches."""

from __future__ import annotations

import re

import sqlalchemy as db
from dagster import DagsterInstance

# not exported by name in Dagster 1.13: the SQL run storages (SQLite, PostgreSQL) and their runs table, queried by
# prefix so that resolving a short id does not list every run of the instance
from dagster._core.storage.runs import SqlRunStorage
from dagster._core.storage.runs.schema import RunsTable

from flujo_dagster.errors import ApprovalError

__all__ = ["MIN_PREFIX", "resolve_run_id"]

MIN_PREFIX = 6
"""The shortest prefix accepted (the UI shows 8 characters)."""
_RUN_ID = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")  # a Dagster run id (a UUID) or a prefix of one
_SHOWN_MATCHES = 10
_MAX_RUN_ID = 64


def _matches(instance: DagsterInstance, prefix: str) -> list[str]:
    """At most `_SHOWN_MATCHES + 1` run ids starting with `prefix` (newest first where the storage orders them)."""
    storage = instance.run_storage
    if isinstance(storage, SqlRunStorage):
        query = (
            db.select(RunsTable.c.run_id)
            .where(RunsTable.c.run_id.like(prefix + "%"))
            .order_by(RunsTable.c.id.desc())
            .limit(_SHOWN_MATCHES + 1)
        )
        with storage.connect() as conn:
            return [str(row[0]) for row in conn.execute(query).fetchall()]
    return [r for r in instance.get_run_ids() if r.startswith(prefix)][: _SHOWN_MATCHES + 1]


def resolve_run_id(instance: DagsterInstance, text: str) -> str:
    """The id of the run `text` names in `instance`: its full id, or a unique prefix of at least `MIN_PREFIX`
    characters (the 8-character ids the Dagster UI shows). `ApprovalError` says what is wrong: not a run id, no
    run, or an ambiguous prefix (listing the runs it matches)."""
    where = f"this Dagster instance ({instance.root_directory})"
    if len(text) <= _MAX_RUN_ID and instance.has_run(text):  # any id a run was given, as it is
        return text
    given = text.strip().lower()
    if not _RUN_ID.fullmatch(given):
        raise ApprovalError(
            f"{text[:40]!r} is not a run id: give the run's id or its first {MIN_PREFIX}+ characters, as the "
            "Dagster UI shows them (hexadecimal digits and dashes)"
        )
    if instance.has_run(given):
        return given
    if len(given) < MIN_PREFIX:
        raise ApprovalError(f"run id prefix {given!r} is too short: give at least {MIN_PREFIX} characters")
    found = _matches(instance, given)
    if not found:
        raise ApprovalError(f"no run of {where} has an id starting with {given!r}")
    if len(found) > 1:
        listed = ", ".join(found[:_SHOWN_MATCHES]) + (", ..." if len(found) > _SHOWN_MATCHES else "")
        raise ApprovalError(
            f"run id prefix {given!r} is ambiguous in {where}: it matches {listed}; give more characters"
        )
    return found[0]
