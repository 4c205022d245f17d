"""The cluster's WAL segment size: asked of the primary once per process, never assumed."""
from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from django.conf import settings

from pitrsite.errors import PitrError
from walcatalog import walnames
from walcatalog.models import WalSegment

log = logging.getLogger(__name__)

_segment_size: int | None = None


def segment_size(archive_dir: Path | None = None) -> int:
    """The cluster's wal_segment_size: asked of the primary once per process, never assumed."""
    global _segment_size
    if _segment_size is None:
        size = _size_from_primary() or _size_from_catalog() or _size_from_archive(
            Path(archive_dir or settings.PITR_WAL_ARCHIVE))
        if size is None:
            raise PitrError("cannot tell the WAL segment size: the primary is not reachable and the archive holds "
                            "no segment yet; start it with `python manage.py fleet up`")
        _segment_size = walnames.validate_segment_size(size)
    return _segment_size


def _size_from_primary() -> int | None:
    from fleet import pg
    from fleet.layout import Layout

    try:
        with pg.connect(Layout.port("primary"), dbname="postgres", timeout=3) as conn:
            row = pg.fetch_row(conn.execute("SELECT setting::bigint, unit FROM pg_settings "
                                            "WHERE name = 'wal_segment_size'"))
    except (PitrError, psycopg.Error) as exc:
        log.info("WAL segment size not read from the primary (%s); using the archive", exc)
        return None
    setting, unit = row
    return setting * {"B": 1, "kB": 1024, "MB": 1 << 20, "8kB": 8192}.get(unit or "B", 1)


def _size_from_catalog() -> int | None:
    row = WalSegment.objects.values_list("start_lsn", "end_lsn").first()
    return row[1] - row[0] if row else None


def _size_from_archive(archive: Path) -> int | None:
    """A complete segment's file size is the segment size (a .partial is padded to it too)."""
    try:
        names = sorted((p for p in archive.iterdir()
                        if len(p.name) == 24 and walnames.is_wal_name(p.name, walnames.MIN_SEGMENT_SIZE)),
                       reverse=True)
    except FileNotFoundError:
        return None
    for path in names:
        try:
            return walnames.validate_segment_size(path.stat().st_size)
        except (walnames.WalNameError, FileNotFoundError):
            continue
    return None
