"""A backup plus known rows on the session fleet, and a catalog narrowed to them, for the storage tests.

The session fleet's archive holds every other test's WAL too; uploading all of it four times would cost
minutes. Inside a test's transaction (rolled back afterwards) `narrow_catalog` makes the catalog look as
if the fleet began with this scenario's backup: older segments' rows are dropped and other backups are
marked not restorable. No file of the shared archive is ever touched: restores "from storage" point
PITR_WAL_ARCHIVE and PITR_BACKUP_DIR at empty private directories instead (`local_files_lost`).
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from tests.restore_helpers import wait_captured, write_rows


def make_scenario(fleet, backups: int = 1, rows_between: int = 8, switch_every: int = 4) -> dict:
    """`backups` backups, each followed by single-row commits ending in a completed segment."""
    from fleet import pg
    from pitrsite.jobs import JobReporter
    from restores.engine import refresh_catalog
    from walcatalog.backups import queue_backup, run_backup

    taken, rows = [], []
    with pg.connect(fleet.layout.port("primary")) as conn:
        for _n in range(backups):
            backup = queue_backup("zstd")
            run_backup(backup, JobReporter(backup))
            taken.append(backup)
            rows.extend(write_rows(conn, rows_between, f"storage-{backup.pk}", switch_every=switch_every))
        conn.execute("SELECT pg_switch_wal()")  # every row in a complete segment: only those are uploaded
        write_rows(conn, 1, "storage-tail")  # ...and one in the growing .partial, which never is
        wait_captured()
    refresh_catalog()
    return {"backups": taken, "backup": taken[0], "rows": rows}


def narrow_catalog(first_backup) -> None:
    """Within the test's transaction: only this scenario's backups and the WAL from its first backup on."""
    from walcatalog import walnames
    from walcatalog.models import BaseBackup, WalSegment

    first_backup.refresh_from_db()
    first = walnames.segment_of_lsn(first_backup.start_lsn, first_backup.segment_size)
    WalSegment.objects.filter(segno__lt=first).delete()
    BaseBackup.objects.filter(created_at__lt=first_backup.created_at).update(manifest_verified=False)


@contextmanager
def local_files_lost(settings, tmp_path: Path):
    """PITR_WAL_ARCHIVE and PITR_BACKUP_DIR point at empty directories: as if the local disk were lost."""
    archive, backups = tmp_path / "lost-archive", tmp_path / "lost-backups"
    archive.mkdir(parents=True)
    backups.mkdir()
    old = settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR
    settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = archive, backups
    try:
        yield archive, backups
    finally:
        settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = old


@contextmanager
def private_copy(settings, tmp_path: Path):
    """A private copy of the archive and backups (hard links; the .partial copied): safe to delete from."""
    # Under the data home, not tmp_path: tar reads the backup as the server account, which cannot enter
    # pytest's private temporary directories.
    root = Path(settings.PITR_HOME) / "test-copies" / tmp_path.name
    archive, backups = root / "archive", root / "backups"
    src_archive, src_backups = Path(settings.PITR_WAL_ARCHIVE), Path(settings.PITR_BACKUP_DIR)
    archive.mkdir(parents=True)
    for path in src_archive.iterdir():
        try:
            (shutil.copy2 if path.name.endswith(".partial") else os.link)(path, archive / path.name)
        except FileNotFoundError:
            pass  # a .partial renamed while we listed: its complete name is linked too, or next time
    shutil.copytree(src_backups, backups, copy_function=os.link)
    from fleet import pg

    pg.give_to_server(backups, *(d for d in backups.rglob("*") if d.is_dir()))  # as the originals: tar reads them
    old = settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR
    settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = archive, backups
    try:
        yield archive, backups
    finally:
        settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = old
        shutil.rmtree(root, ignore_errors=True)  # links and copies only: the originals keep their names
