"""Index pass timings: N new real segments, a pass with nothing new, and the same at 100k cataloged segments.

    PITR_HOME=/tmp/pitr-bench ... .venv/bin/python bench/index.py [--new 50] [--scale 100000] \
        [--out bench/results/index.json]

Needs the fleet running in that PITR_HOME (`python manage.py fleet up`). The catalog goes into a private
SQLite database in a temporary directory (never the configured one), migrated first; set --database-url to
measure on PostgreSQL instead (it must be an empty database you can throw away).

1. real: writes about --new segments' worth of rows on the primary (20 commits per segment, pg_switch_wal
   after each), waits until the capturer has them, indexes the real archive once (hash + pg_waldump per new
   file), then times a second pass with nothing new (median of 5).
2. scale: a scratch archive of --scale sparse files on a made-up timeline, cataloged with matching
   rows, plus the real segments; times a pass with nothing new (median of 3), then copies 10 more real
   segments in and times the pass that finds them, and the catalog questions (gaps, window, summary).

Writes the figures as JSON to --out and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
FAKE_TIMELINE = 0x7F


def setup_django(database_url: str | None, scratch: Path) -> None:
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{scratch / 'bench-index.sqlite3'}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pitrsite.settings")
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def timed(call) -> tuple[float, object]:
    began = time.perf_counter()
    result = call()
    return time.perf_counter() - began, result


def write_segments(count: int, seg_size: int) -> list[str]:
    """``count`` segments of real WAL, 20 commits each; returns the completed segment names."""
    from fleet import pg
    from fleet.layout import Layout

    rows_per_commit = max(1, seg_size // 500 // 20)  # about a segment of WAL (rows plus index entries)
    names = []
    with pg.connect(Layout.current().port("primary")) as conn:
        for _ in range(count):
            for _ in range(20):
                conn.execute("INSERT INTO test_data (payload) SELECT md5(random()::text) FROM generate_series(1, %s)",
                             [rows_per_commit])
            names.append(conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
    return names


def wait_archived(archive: Path, names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all((archive / n).exists() for n in names):
        if time.monotonic() > deadline:
            raise SystemExit(f"the capturer did not complete {names[-1]} within {timeout:.0f} s: is the fleet up?")
        time.sleep(0.2)


def real_phase(new: int) -> dict:
    from django.conf import settings

    from walcatalog import catalog
    from walcatalog.indexer import index_archive

    archive = Path(settings.PITR_WAL_ARCHIVE)
    seg_size = catalog.segment_size()
    index_archive()  # catalog what is there already: the measured pass sees only the new files
    names = write_segments(new, seg_size)
    wait_archived(archive, names)
    seconds, result = timed(index_archive)
    idle = [timed(index_archive) for _ in range(5)]
    return {"segment_size": seg_size, "switches": new, "new_segments": result.new,
            "archive_files": len(os.listdir(archive)),
            "pass_seconds": round(seconds, 3), "per_new_segment_ms": round(1000 * seconds / max(1, result.new), 1),
            "result": result.as_dict(),
            "idle_pass_seconds": round(statistics.median(t for t, _ in idle), 4),
            "idle_hashed": sum(r.hashed for _, r in idle)}


def scale_phase(scale: int, scratch: Path) -> dict:
    from django.conf import settings

    from walcatalog import catalog, walnames
    from walcatalog.indexer import index_archive
    from walcatalog.models import WalSegment

    seg_size = catalog.segment_size()
    real = Path(settings.PITR_WAL_ARCHIVE)
    archive = scratch / "archive"
    archive.mkdir()
    complete = sorted(n for n in os.listdir(real) if len(n) == 24 and walnames.is_wal_name(n, seg_size))
    held_back, initial = complete[-10:], complete[:-10]
    for name in initial:
        shutil.copy2(real / name, archive / name)
    began = time.perf_counter()
    rows = []
    for segno in range(1, scale + 1):
        name = walnames.segment_name(FAKE_TIMELINE, segno, seg_size)
        path = archive / name
        with open(path, "wb") as fh:
            fh.truncate(seg_size)  # sparse: no disk space, same listing and stat cost as a real file
        st = path.stat()
        rows.append(WalSegment(timeline=FAKE_TIMELINE, segno=segno, name=name, start_lsn=segno * seg_size,
                               end_lsn=(segno + 1) * seg_size, size=seg_size, mtime_ns=st.st_mtime_ns,
                               scanned_to=(segno + 1) * seg_size, sha256="0" * 64))
    WalSegment.objects.bulk_create(rows, batch_size=5000)
    index_archive(archive)  # the real copies
    setup_seconds = time.perf_counter() - began
    idle = [timed(lambda: index_archive(archive)) for _ in range(3)]
    WalSegment.objects.filter(name__in=held_back).delete()  # new to the catalog, not files coming back
    for name in held_back:
        shutil.copy2(real / name, archive / name)
    with_new, result = timed(lambda: index_archive(archive))
    questions = {name: round(timed(call)[0], 3) for name, call in (
        ("gaps", catalog.gaps), ("window", catalog.recoverable_window),
        ("summary", lambda: catalog.summary(with_fleet=False)))}
    return {"cataloged_segments": WalSegment.objects.count(), "files": len(os.listdir(archive)),
            "setup_seconds": round(setup_seconds, 1),
            "idle_pass_seconds": round(statistics.median(t for t, _ in idle), 3),
            "idle_hashed": sum(r.hashed for _, r in idle),
            "pass_with_10_new_seconds": round(with_new, 3), "pass_with_10_new": result.as_dict(),
            "catalog_questions_seconds": questions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=50, help="real segments to write and index")
    parser.add_argument("--scale", type=int, default=100_000, help="cataloged segments for the scale phase")
    parser.add_argument("--database-url", default=None, help="catalog database (default: a scratch SQLite)")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "index.json")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pitr-bench-index-") as tmp:
        scratch = Path(tmp)
        setup_django(opts.database_url, scratch)
        from django.db import connection

        started_at = datetime.now(timezone.utc).isoformat()
        real = real_phase(opts.new)
        scale = scale_phase(opts.scale, scratch)
        report = {"started_at": started_at, "database": connection.vendor, "python": platform.python_version(),
                  "cpus": os.cpu_count(), "real": real, "scale": scale}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{real['new_segments']} new segments indexed in {real['pass_seconds']:.2f} s "
          f"({real['per_new_segment_ms']:.0f} ms each), idle pass {1000 * real['idle_pass_seconds']:.1f} ms; "
          f"at {scale['cataloged_segments']} segments: idle pass {scale['idle_pass_seconds']:.2f} s, "
          f"10 new {scale['pass_with_10_new_seconds']:.2f} s; written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
