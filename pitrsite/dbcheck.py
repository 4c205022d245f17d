"""Whether Django's own database was ever migrated: a fresh home must say so in one line."""
from __future__ import annotations

from typing import Callable, TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

T = TypeVar("T")


def unmigrated_message() -> str | None:
    """One line naming the fix when migrations are pending, else None (the error is something else)."""
    from django.db.migrations.executor import MigrationExecutor

    connection = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return None  # the database itself is unreachable: let that error speak
    if not pending:
        return None
    name = connection.settings_dict["NAME"]
    return f"the database {name} is not migrated ({len(pending)} migrations pending): run `python manage.py migrate`"


def unless_unmigrated(read: Callable[[], T], fresh: T) -> T:
    """read(), or `fresh` in a home whose database is not migrated yet (it holds no rows to read); any other
    database error is raised: that error speaks."""
    try:
        return read()
    except DatabaseError:
        if unmigrated_message() is None:
            raise
        return fresh
