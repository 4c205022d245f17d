"""The migration to servers: rows of a catalog from before it belong to the demo server afterwards."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("walcatalog", "0009_basebackup_pinned"), ("restores", "0005_job_cancelled_started_by"),
          ("chaos", "0002_job_cancelled_started_by"), ("fleet", None)]
AFTER = [("walcatalog", "0010_server"), ("restores", "0006_server"), ("chaos", "0003_server"),
         ("fleet", "0005_server_standby_port")]  # 0003..0005 run before those (they read Server)


@pytest.mark.django_db(transaction=True)
def test_existing_rows_move_to_the_demo_server():
    executor = MigrationExecutor(connection)
    try:
        _move_rows(executor)
    finally:  # the rest of the suite needs every migration again
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def _move_rows(executor: MigrationExecutor) -> None:
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE[:3]).apps
    tl = old.get_model("walcatalog", "Timeline").objects.create(tli=1)
    seg = old.get_model("walcatalog", "WalSegment").objects.create(
        timeline=1, segno=2, name="000000010000000000000002", start_lsn=2 << 24, end_lsn=3 << 24, size=1 << 24)
    backup = old.get_model("walcatalog", "BaseBackup").objects.create(label="pitr_old")
    job = old.get_model("restores", "RestoreJob").objects.create(target_kind="latest")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    demo = new.get_model("fleet", "Server").objects.get(name="demo")
    assert demo.kind == "managed"
    for model, pk in (("walcatalog.Timeline", tl.pk), ("walcatalog.WalSegment", seg.pk),
                      ("walcatalog.BaseBackup", backup.pk), ("restores.RestoreJob", job.pk)):
        assert new.get_model(*model.split(".")).objects.get(pk=pk).server_id == demo.pk, model
