"""Restore from S3 (moto server) next to restore from the local archive, and upload throughput.

    .venv/bin/python bench/storage.py [--scale 10] [--seconds 10] [--rounds 3] [--out bench/results/storage.json]

It brings up its own fleet in a temporary data home on free loopback ports and a moto S3 server on a
free loopback port (PITR_STORAGE_BACKEND=s3), loads pgbench at the given scale, takes a zstd backup and
runs pgbench for --seconds to make WAL. Then:

  upload:  one upload pass of everything (backup files, descriptor, WAL) with 1, 4 and 8 parallel
           transfers (PITR_UPLOAD_PARALLEL); each pass uploads and then reads every object back to hash
           it, and the time of both halves is reported (the cost of the honest checksum check).
  restore: per round, the same target time T restored (a) from the local archive and backup directory,
           (b) with PITR_WAL_ARCHIVE and PITR_BACKUP_DIR pointing at empty directories, so the engine
           downloads the backup and exactly the planned WAL range from S3 (PITR_DOWNLOAD_PARALLEL=8),
           checking every sha256 before use; in rotated order, each from an emptied, stopped restore
           target with the page cache dropped (untimed), as bench/peers.py does.

Medians, the ratio and the steps' own timings (what the download steps add) are written to the JSON
file. Goal: restore from S3 <= 1.2x local (issue 13).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PROJECT, clear_target, drop_caches, fleet_with_pgbench, free_port, pgbench, private_home, timed,
    write_results,
)

BUCKET = "pitr-bench"


def start_moto(home: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process: in ours it would share the GIL with the transfers it serves."""
    port = free_port()
    log = open(home / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not start: see {home / 'moto.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10, help="pgbench run after the backup (WAL to replay)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "storage.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data home")
    opts = parser.parse_args()

    home = private_home("pitr-bench-storage-")
    moto, endpoint = start_moto(home)
    os.environ.update(PITR_STORAGE_BACKEND="s3", PITR_STORAGE_S3_BUCKET=BUCKET, PITR_STORAGE_S3_ENDPOINT_URL=endpoint,
                      PITR_STORAGE_S3_REGION="us-east-1", PITR_STORAGE_S3_ACCESS_KEY_ID="bench",
                      PITR_STORAGE_S3_SECRET_ACCESS_KEY="bench", PITR_DOWNLOAD_PARALLEL="8")
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    driver = fleet_with_pgbench(opts.scale)
    from django.conf import settings

    from fleet import pg
    from pitrsite.jobs import JobReporter
    from restores.engine import run_restore
    from restores.service import queue_restore
    from restores.targets import RestoreTarget
    from tests.restore_helpers import wait_captured
    from walcatalog.backups import queue_backup, run_backup
    from walcatalog.indexer import index_archive
    from walcatalog.models import StorageCopy
    from walcatalog.uploader import upload_pass

    port = driver.layout.port("primary")
    try:
        backup = queue_backup("zstd", trigger="bench")
        run_backup(backup, JobReporter(backup))
        pgbench(driver, "-T", str(opts.seconds), "-c", "2")
        with pg.connect(port) as conn:
            target = conn.execute("SELECT max(pg_xact_commit_timestamp(xmin)) FROM pgbench_history").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("SELECT txid_current()")  # a commit after T, so a time target can stop
            conn.execute("SELECT pg_switch_wal()")  # ...in a complete segment: only those are uploaded
        wait_captured(120)
        index_archive()

        results: dict = {"scale": opts.scale, "pgbench_seconds": opts.seconds, "upload": [], "rounds": []}
        for workers in (1, 4, 8):
            StorageCopy.objects.all().delete()  # everything uploads again (over the same keys)
            up = upload_pass(workers=workers)
            assert not up.errors, up.errors
            row = {"parallel": workers, "objects": up.uploaded, "bytes": up.bytes, "wall_s": up.seconds,
                   "mb_per_s": up.bytes / up.seconds / 1e6, "upload_s_summed": up.upload_seconds,
                   "verify_s_summed": up.verify_seconds,
                   "verify_share": up.verify_seconds / max(1e-9, up.upload_seconds + up.verify_seconds)}
            print(json.dumps(row), flush=True)
            results["upload"].append(row)

        empty = home / "lost"
        for n in range(opts.rounds):
            timings = {}
            for where in (("local", "s3") if n % 2 == 0 else ("s3", "local")):  # rotated order
                clear_target(driver)  # both start from an empty, stopped target and a cold cache (untimed)
                drop_caches()
                if where == "local":
                    timings[where] = restore(target, queue_restore, run_restore, RestoreTarget)
                    continue
                shutil.rmtree(empty, ignore_errors=True)
                (empty / "archive").mkdir(parents=True)
                (empty / "backups").mkdir()
                real = settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR
                settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = empty / "archive", empty / "backups"
                try:
                    timings[where] = restore(target, queue_restore, run_restore, RestoreTarget)
                finally:
                    settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = real
                index_archive()  # the local files are back (the catalog had marked them missing): not timed
            driver.stop("restore_target", mode="immediate")
            local, remote = timings["local"], timings["s3"]
            assert (local["source"], remote["source"]) == ("local", "storage"), (local["source"], remote["source"])
            # What storage adds: extraction reading the backup as it downloads (and its other files after it),
            # and any wait for WAL downloads not hidden behind it.
            extra = sum(step(remote, name) - step(local, name) for name in ("extracting the backup", "staging WAL"))
            row = {"restore_local_s": local["seconds"], "restore_s3_s": remote["seconds"],
                   "storage_steps_extra_s": extra, "wal_files": remote["wal_files"],
                   "steps_local": local["steps"], "steps_s3": remote["steps"]}
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("steps")}), flush=True)
            results["rounds"].append(row)
        results["median_restore_local_s"] = statistics.median(r["restore_local_s"] for r in results["rounds"])
        results["median_restore_s3_s"] = statistics.median(r["restore_s3_s"] for r in results["rounds"])
        results["restore_ratio"] = results["median_restore_s3_s"] / results["median_restore_local_s"]
        results["median_storage_steps_extra_s"] = statistics.median(r["storage_steps_extra_s"]
                                                                   for r in results["rounds"])
        results["goal_restore_ratio"] = 1.2
        results["backup_stored_bytes"] = backup.size_stored
        results["machine"] = {"cpus": os.cpu_count(),
                              "storage": "moto server in its own process (S3 API over HTTP on loopback)"}
        write_results(opts.out, results)
        print(f"restore from S3 / local = {results['restore_ratio']:.3f} (goal <= 1.2) -> {opts.out}")
    finally:
        driver.down()
        moto.terminate()
        moto.wait(10)
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


def step(result: dict, name: str) -> float:
    return sum(s["seconds"] or 0 for s in result["steps"] if s["name"] == name)


def restore(target, queue_restore, run_restore, RestoreTarget) -> dict:
    job = queue_restore(RestoreTarget.from_options(time=target.isoformat()), trigger="bench")
    from pitrsite.jobs import JobReporter

    seconds = timed(lambda: run_restore(job, JobReporter(job)))  # the job row keeps per-step timings
    job.refresh_from_db()
    assert job.state == "done", job.error
    return {"seconds": seconds, "source": job.source, "wal_files": job.wal_files, "steps": job.steps}


if __name__ == "__main__":
    main()
