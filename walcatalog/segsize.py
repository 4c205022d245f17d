"""The cluster's WAL segment size: asked of the primary once per process, never assumed."""
from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from fleet import servers
from fleet.layout import Layout
from pitrsite.errors import PitrError
from walcatalog import walnames
from walcatalog.models import WalSegment

log = logging.getLogger(__name__)

_segment_size: int | None = None  # the demo server's
_other_sizes: dict[int, int] = {}  # other servers', by id: each has its own (initdb --wal-segsize)


def segment_size(archive_dir: Path | None = None) -> int:
    """The current server's wal_segment_size: asked of it once per process, never assumed."""
    global _segment_size
    server = servers.chosen()
    other = None if server is None or server.managed else server.pk
    known = _segment_size if other is None else _other_sizes.get(other)
    if known is None:
        size = _size_from_primary() or _size_from_catalog() or _size_from_archive(
            Path(archive_dir or Layout.current().archive))
        if size is None:
            raise PitrError("cannot tell the WAL segment size: the primary is not reachable and the archive holds "
                            "no segment yet; start it with `python manage.py fleet up`")
        known = walnames.validate_segment_size(size)
        if other is None:
            _segment_size = known
        else:
            _other_sizes[other] = known
    return known


def _size_from_primary() -> int | None:
    from fleet import pg
    from fleet.driver import get_driver

    try:
        with get_driver().connect("primary", dbname="postgres", timeout=3) as conn:
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
