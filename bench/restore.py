"""Backup and restore through pitrsite next to the bare PostgreSQL tools, on one pgbench database.

    .venv/bin/python bench/restore.py --scale 20 [--rounds 3] [--out bench/results/restore.json]

It brings up its own fleet in a temporary data home on free loopback ports,
loads pgbench at the given scale, then per round:
  backup:  pitrsite `run_backup` (zstd, verified)  vs  pg_basebackup -Ft -Xstream --compress=client-zstd
  restore: pitrsite `run_restore` to a time T       vs  tar -x + recovery.signal + cp restore_command + pg_ctl,
           waiting for promotion, with the same T and the same WAL.
Medians and the ratios are written to the JSON file. Goal: restore <= 1.15x the bare tools.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PROJECT, bench_parser, clear_target, fleet_with_pgbench, pgbench, private_home, timed, write_results,
)


def main() -> None:
    opts = bench_parser(__doc__, rounds=3, out=PROJECT / "bench" / "results" / "restore.json").parse_args()

    home = private_home("pitr-bench-")
    driver = fleet_with_pgbench(opts.scale)
    from django.conf import settings

    from fleet import pg
    from pitrsite.jobs import JobReporter
    from restores.engine import run_restore
    from restores.service import queue_restore
    from restores.targets import RestoreTarget
    from tests.restore_helpers import wait_captured
    from walcatalog.backups import queue_backup, run_backup

    port = driver.layout.port("primary")
    host = ["-h", "127.0.0.1", "-p", str(port)]
    try:
        results = {"scale": opts.scale, "rounds": []}
        for n in range(opts.rounds):
            bare_dir = home / f"bare-backup-{n}"
            backup = queue_backup("zstd", trigger="bench")
            ours_backup = timed(lambda backup=backup: run_backup(backup, JobReporter(backup)))
            pg.give_to_server(bare_dir.parent)
            bare_backup = timed(lambda bare_dir=bare_dir: pg.run([pg.tool("pg_basebackup"), *host, "-U",
                                                settings.PITR_REPL_USER,
                                                "--no-password", "-D", str(bare_dir), "-Ft", "-Xstream",
                                                "--checkpoint=fast", "--compress=client-zstd"],
                                               step="bare pg_basebackup", env=pg.libpq_env(), timeout=3600))
            # WAL to replay after the backup: a short pgbench run, then a target time inside it.
            pgbench(driver, "-T", "15", "-c", "2")
            with pg.connect(port) as conn:
                target = conn.execute("SELECT max(pg_xact_commit_timestamp(xmin)) FROM pgbench_history").fetchone()[0]
                # A commit after T, then a switch: the bare restore's plain cp reads complete segments only,
                # and PostgreSQL will not end recovery before it has seen a commit past a time target.
                conn.execute("SELECT txid_current()")
                conn.execute("SELECT pg_switch_wal()")
            wait_captured(60)
            job = queue_restore(RestoreTarget.from_options(time=target.isoformat()), trigger="bench")
            clear_target(driver)  # both sides start from an empty, stopped restore target (untimed)
            ours_restore = timed(lambda job=job: run_restore(job, JobReporter(job)))
            job.refresh_from_db()
            assert job.state == "done", job.error
            clear_target(driver)
            bare_restore = timed(lambda bare_dir=bare_dir, target=target:
                                 bare_restore_run(driver, bare_dir, target, pg, settings))
            driver.stop("restore_target", mode="immediate")
            row = {"backup_pitrsite_s": ours_backup, "backup_bare_s": bare_backup,
                   "restore_pitrsite_s": ours_restore, "restore_bare_s": bare_restore,
                   "restore_steps": job.steps, "wal_files": job.wal_files}
            print(json.dumps({k: v for k, v in row.items() if k != "restore_steps"}), flush=True)
            results["rounds"].append(row)
        for key in ("backup_pitrsite_s", "backup_bare_s", "restore_pitrsite_s", "restore_bare_s"):
            results[f"median_{key}"] = statistics.median(r[key] for r in results["rounds"])
        results["backup_ratio"] = results["median_backup_pitrsite_s"] / results["median_backup_bare_s"]
        results["restore_ratio"] = results["median_restore_pitrsite_s"] / results["median_restore_bare_s"]
        results["goal_restore_ratio"] = 1.15
        results["machine"] = {"cpus": os.cpu_count(), "postgres": pg.run([pg.tool("postgres"), "--version"],
                                                                        step="version", as_server=False).stdout.strip()}
        write_results(opts.out, results)
        print(f"restore ratio {results['restore_ratio']:.3f}, backup ratio {results['backup_ratio']:.3f} -> {opts.out}")
    finally:
        driver.down()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


def bare_restore_run(driver, backup_dir: Path, target, pg, settings) -> None:
    """What a DBA would do by hand with the same backup, archive and target."""
    datadir = driver.layout.datadir("restore_target")
    pg.give_to_server(datadir / "pg_wal")
    # PostgreSQL 15 compresses base.tar with zstd but writes pg_wal.tar plain.
    for stem, into in (("base", datadir), ("pg_wal", datadir / "pg_wal")):
        archive = next(backup_dir.glob(f"{stem}.tar*"))
        pg.run(["tar", *(["--zstd"] if archive.suffix == ".zst" else []), "-x", "-f", str(archive), "-C", str(into)],
               step="bare tar")
    driver.put_file("restore_target", "recovery.signal", "")
    driver.write_node_conf("restore_target", {
        "restore_command": f'cp "{driver.layout.archive}/%f" "%p"',
        "recovery_target_time": target.isoformat(sep=" "), "recovery_target_action": "promote"})
    pg.run([pg.tool("pg_ctl"), "-D", str(datadir), "-l", str(driver.layout.logfile("restore_target")), "-W", "-s",
            "start"], step="bare pg_ctl start")
    # Polled like pitrsite's engine polls (every 0.05 s), so neither side gains from its wait loop.
    deadline = time.monotonic() + 3600
    started_by = time.monotonic() + 30  # pg_ctl -W returns before postmaster.pid exists
    while time.monotonic() < deadline:
        if not (datadir / "postmaster.pid").exists() and time.monotonic() > started_by:
            raise RuntimeError(f"bare restore failed: see {driver.layout.logfile('restore_target')}")
        if (datadir / "postmaster.pid").exists():
            started_by = 0.0
        try:
            with pg.connect(driver.layout.port("restore_target"), dbname="postgres", timeout=2) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError("bare restore did not promote")


if __name__ == "__main__":
    main()
