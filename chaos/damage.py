"""Chaos actions that damage the archive (issue 10): they must be caught, then they are repaired.

- bitrot: 16 bytes flipped in the middle of a complete, indexed segment the
  run's backup needs, its mtime kept (what a bad disk does quietly);
- stray: a valid-looking history file for a timeline that does not exist
  (newest + 5), branching from the newest timeline inside the WAL we hold.

After the damage a restore to the latest WAL is run. Caught means it was
refused or failed naming the problem (kept as restore_error), or it is exact: every row logged as
committed up to what the catalog had indexed is there and nothing else of
this run's. A restore that ends `done` with other rows is a wrong done and
fails the run. Then the damage is undone and the archive reindexed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chaos.params import ChaosError
from chaos.writers import read_jsonl
from fleet import pg
from pitrsite.errors import PitrError
from walcatalog import walnames

FLIPPED = 16


@dataclass
class Damage:
    path: Path
    created: bool  # a stray file to delete, else bytes to put back
    offset: int = 0
    original: bytes = b""
    times_ns: tuple[int, int] = (0, 0)
    names: tuple[str, ...] = ()  # words a refusal must mention to count as naming the problem
    timeline: int | None = None  # the stray timeline, forgotten by the catalog on repair

    def repair(self) -> None:
        if self.created:
            self.path.unlink(missing_ok=True)
            return
        with open(self.path, "r+b") as fh:
            fh.seek(self.offset)
            fh.write(self.original)
        os.utime(self.path, ns=self.times_ns)

    def forget(self) -> None:
        """The catalog must not keep a timeline whose history file is gone."""
        from walcatalog.models import Timeline

        if self.timeline is not None:
            Timeline.objects.filter(tli=self.timeline).delete()


def rot_segment(archive: Path, after_lsn: int) -> Damage:
    """Flip 16 bytes in the middle of the newest complete indexed segment starting at or after ``after_lsn``."""
    from walcatalog.models import WalSegment

    segment = WalSegment.objects.filter(is_partial=False, start_lsn__gte=after_lsn).order_by("-end_lsn").first()
    if segment is None or not (archive / segment.name).exists():
        raise ChaosError("bitrot: no complete indexed segment after the run's backup yet (try a longer interval)")
    path = archive / segment.name
    stat = path.stat()
    offset = stat.st_size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(FLIPPED)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in original))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return Damage(path, False, offset, original, (stat.st_atime_ns, stat.st_mtime_ns), (segment.name,))


def stray_history(archive: Path, switch_lsn: int) -> Damage:
    """Write NNNNNNNN.history for newest + 5, its parent the newest timeline, branching at ``switch_lsn``."""
    from walcatalog.models import Timeline

    newest = max([t.tli for t in Timeline.objects.all()] + [1])
    stray = newest + 5
    parent = archive / walnames.history_name(newest)
    lines = parent.read_text() if parent.exists() else ""
    path = archive / walnames.history_name(stray)
    path.write_text(lines + f"{newest}\t{walnames.format_lsn(switch_lsn)}\tno recovery target specified\n")
    # A refusal names the stray timeline by its file name, its number, or its id in WAL file names.
    return Damage(path, True, names=(path.name, f"timeline {stray}", f"{stray:08X}"), timeline=stray)


def restore_latest_caught(damage: Damage, run_dir: Path, writer_ids: list[int], restore_port: int,
                          indexed_lsn: int) -> dict:
    """Restore to the latest WAL and judge it: {caught, how, error | missing/extra counts, restore_job}."""
    from pitrsite.jobs import JobReporter, JobState
    from restores.engine import run_restore
    from restores.service import queue_restore
    from restores.targets import RestoreTarget

    result: dict = {}
    try:
        job = queue_restore(RestoreTarget.from_options(latest=True), trigger="chaos")
        result["restore_job"] = job.pk
        job = run_restore(job, JobReporter(job))
        error = job.error if job.state != JobState.DONE else ""
    except PitrError as exc:
        error = str(exc)
    if error:
        named = any(name.lower() in error.lower() for name in damage.names)
        return {**result, "caught": named, "how": "refused" if named else "failed without naming the damage",
                "restore_error": error}
    return {**result, **compare_latest(run_dir, writer_ids, restore_port, indexed_lsn, job.final_lsn)}


def compare_latest(run_dir: Path, writer_ids: list[int], restore_port: int, indexed_lsn: int,
                   final_lsn: int | None) -> dict:
    """A latest restore is exact when it holds every logged commit up to what was indexed, and nothing unlogged."""
    entries = [e for path in sorted(run_dir.glob("writes-*.jsonl")) for e in read_jsonl(path)]
    logged = {(e["writer"], e["seq"]) for e in entries}
    must = {(e["writer"], e["seq"]) for e in entries if e["status"] != "unknown" and e.get("lsn_after")
            and walnames.parse_lsn(e["lsn_after"]) <= indexed_lsn}
    with pg.connect(restore_port, timeout=10) as conn:
        restored = {(w, s) for w, s in conn.execute("SELECT writer, seq FROM test_data WHERE writer = ANY(%s)",
                                                    [writer_ids]).fetchall()}
    missing, extra = must - restored, restored - logged
    exact = not missing and not extra
    return {"caught": exact, "how": "exact" if exact else "wrong done", "missing_count": len(missing),
            "extra_count": len(extra), "final_lsn": walnames.format_lsn(final_lsn) if final_lsn else None}
