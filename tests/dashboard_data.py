"""Catalog rows for dashboard tests and the dashboard benchmark, made directly in the database."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from pitrsite.jobs import JobState
from restores.models import RestoreJob, TargetKind
from walcatalog import walnames
from walcatalog.models import BaseBackup, Timeline, WalSegment

SEG = 1 << 20  # the test fleet's 1 MiB segments


def make_segments(timeline: int, segnos, start: datetime, step: timedelta, partial_last: bool = False,
                  batch: int = 5000) -> int:
    """One row per segment number, commit times `step` apart from `start`."""
    Timeline.objects.get_or_create(tli=timeline)
    segnos = list(segnos)
    rows = []
    for i, segno in enumerate(segnos):
        at = start + step * i
        partial = partial_last and i == len(segnos) - 1
        rows.append(WalSegment(
            timeline=timeline, segno=segno, name=walnames.segment_name(timeline, segno, SEG),
            start_lsn=segno * SEG, end_lsn=(segno + 1) * SEG, size=SEG // 3 if partial else SEG, is_partial=partial,
            first_commit_at=at - step / 2, last_commit_at=at, last_commit_lsn=segno * SEG + 4096, commit_count=7,
            scanned_to=(segno + 1) * SEG, sha256="" if partial else f"{segno:064x}"))  # complete ones are hashed
    WalSegment.objects.bulk_create(rows, batch_size=batch)
    return len(rows)


def make_backup(timeline: int, segno: int, stop_time: datetime, state: str = JobState.DONE,
                verified: bool = True, label: str | None = None) -> BaseBackup:
    return BaseBackup.objects.create(
        label=label or f"pitr_test_{timeline}_{segno}_{BaseBackup.objects.count()}", state=state, timeline=timeline,
        start_lsn=segno * SEG + 40, stop_lsn=segno * SEG + 4096, start_time=stop_time - timedelta(seconds=2),
        stop_time=stop_time, size_raw=30 << 20, size_stored=4 << 20, manifest_verified=verified,
        segment_size=SEG, started_at=stop_time - timedelta(seconds=3), finished_at=stop_time,
        progress_done=30 << 20 if state == JobState.DONE else 0, progress_total=30 << 20)


def make_restore(state: str = JobState.RUNNING, backup: BaseBackup | None = None, **fields) -> RestoreJob:
    now = timezone.now()
    values = dict(target_kind=TargetKind.LSN, target_value="0/5000000", state=state, backup=backup,
                  current_step="replaying WAL" if state == JobState.RUNNING else "", target_lsn=5 * SEG,
                  replay_lsn=4 * SEG, started_at=now - timedelta(seconds=20),
                  steps=[{"name": "extracting the backup", "started_at": (now - timedelta(seconds=20)).isoformat(),
                          "seconds": 3.2},
                         {"name": "replaying WAL", "started_at": (now - timedelta(seconds=5)).isoformat(),
                          "seconds": None}])
    values.update(fields)
    return RestoreJob.objects.create(**values)


def make_chaos_run(state: str = JobState.DONE, verdict: str = "passed"):
    """A finished chaos run shaped like chaos.run writes it: events, per-T results, writes per second."""
    from chaos.models import ChaosRun

    start = timezone.now() - timedelta(minutes=10)
    t = start.timestamp()

    def iso(seconds: float) -> str:
        return (start + timedelta(seconds=seconds)).isoformat()

    events = [{"action": "capturer_kill", "description": "SIGKILL of pg_receivewal", "started_at": iso(20),
               "ended_at": iso(20.1), "recovered_at": iso(21.5), "ok": True, "recovery_seconds": 1.4},
              {"action": "primary_pause", "description": "SIGSTOP of the primary", "started_at": iso(50),
               "ended_at": iso(54), "recovered_at": iso(55), "ok": True, "recovery_seconds": 1.0}]
    good = {"moment": iso(30.25), "kind": "commit", "restore_job": None, "ok": True, "expected_rows": 812,
            "checks": {"ids": True, "prefixes": True, "end_lsn": True, "count": True}, "missing_ids": [],
            "missing_count": 0, "extra_ids": [], "extra_count": 0, "end_lsn": {"final": "0/5A3C1D0"},
            "count": {"restored": 812, "expected": 812}, "seconds": 14.2}
    bad = {**good, "moment": iso(60.5), "ok": verdict == "passed", "expected_rows": 1500,
           "checks": {"ids": verdict == "passed", "prefixes": True, "end_lsn": True, "count": verdict == "passed"},
           "missing_ids": [] if verdict == "passed" else [1498, 1499], "missing_count": 0 if verdict == "passed" else 2,
           "count": {"restored": 1500 if verdict == "passed" else 1498, "expected": 1500}}
    return ChaosRun.objects.create(
        state=state, verdict=verdict, summary=f"2 actions recovered; "
                                             f"{2 if verdict == 'passed' else 1}/2 restores exact",
        parameters={"writers": 6, "duration": 90, "interval": [20, 30], "restores": 2}, events=events,
        verifications=[good, bad], writes_count=1600, writes_series=[[int(t) + s, 12 + s % 7] for s in range(0, 90)],
        started_at=start, finished_at=start + timedelta(minutes=3), current_step="" if state == JobState.DONE else
        "writing with chaos")
