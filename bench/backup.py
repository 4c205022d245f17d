"""A verified pitrsite base backup next to a bare pg_basebackup, and the pieces of the difference.

    .venv/bin/python bench/backup.py --scale 20 [--rounds 5] [--out bench/results/backup.json]

It brings up its own fleet in a temporary data home on free loopback ports, loads pgbench at the given
scale, then per round (the order of the three backups alternates from round to round):
  bare:       pg_basebackup -Ft -Xstream --checkpoint=fast --compress=client-zstd (bench/peer_tools.py's Bare)
  pitrsite:   run_backup (zstd, verified before it is offered), as bench/restore.py calls it
  pitrsite_full_priority: the same with the verifier not lowered to nice 19 while pg_basebackup runs
  pgbb_alone: pitrsite's own pg_basebackup command line into its layout, with no verifier
  pgbb_server_zstd: the same with --compress=server-zstd (a candidate: the primary compresses)
and on the finished pitrsite backup, verification alone (walcatalog.backups._verify on a done archive),
from a cold cache (the backup's files dropped from the page cache with posix_fadvise) and a warm one.
CPU seconds: this process (the verifier's threads), its reaped children (pg_basebackup, zstd, tar,
pg_waldump) and the primary's reaped backends (the walsenders), from getrusage and /proc/<postmaster>/stat.
Medians and the ratio to bare are written to the JSON file. Goal: pitrsite <= 1.15x bare.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, bench_parser, fleet_with_pgbench, private_home, write_results  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_now(postmaster_pid: int) -> dict[str, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = Path(f"/proc/{postmaster_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"self": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime,
            "server": (int(fields[13]) + int(fields[14])) / TICK}  # cutime, cstime: reaped backends


def measured(fn, postmaster_pid: int) -> dict[str, float]:
    before = cpu_now(postmaster_pid)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = cpu_now(postmaster_pid)
    return {"wall_s": wall, **{f"cpu_{k}_s": after[k] - before[k] for k in before}}


def drop_cache(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> None:
    opts = bench_parser(__doc__, rounds=5, out=PROJECT / "bench" / "results" / "backup.json").parse_args()

    home = private_home("pitr-bench-backup-")
    driver = fleet_with_pgbench(opts.scale)
    from django.conf import settings

    from fleet import pg, servers
    from pitrsite.jobs import JobReporter
    from walcatalog import backups, verify
    from walcatalog.models import BaseBackup

    host = ["-h", "127.0.0.1", "-p", str(driver.layout.port("primary"))]
    pm_pid = int((driver.layout.datadir("primary") / "postmaster.pid").read_text().split()[0])
    scratch = home / "runs"
    pg.give_to_server(scratch)

    def bare(dest: Path) -> None:
        pg.run([pg.tool("pg_basebackup"), *host, "-U", settings.PITR_REPL_USER, "--no-password", "-D", str(dest),
                "-Ft", "-Xstream", "--checkpoint=fast", "--compress=client-zstd"],
               step="bare pg_basebackup", env=pg.libpq_env(), timeout=3600)

    def pgbb_alone(dest: Path, where: str = "client") -> None:
        """pitrsite's argv (backups._take), its progress lines parsed, no verifier."""
        c = servers.conn()
        pg.run([pg.tool("pg_basebackup"), *host, "-U", c.replication_user, "--no-password", "-D", str(dest),
                "--format=tar", "--wal-method=stream", "--checkpoint=fast", "--progress", "--verbose",
                f"--label={dest.name}", f"--compress={where}-zstd", "--manifest-checksums=CRC32C"],
               step="pg_basebackup", env=servers.libpq_env(c), timeout=3600, on_line=lambda line: True)

    last: list[BaseBackup] = []

    def ours(_dest: Path) -> None:
        backup = backups.queue_backup("zstd", trigger="bench")
        backups.run_backup(backup, JobReporter(backup))
        backup.refresh_from_db()
        assert backup.state == "done" and backup.manifest_verified, backup.error
        last.append(backup)

    def ours_at_full_priority(dest: Path) -> None:
        """run_backup with the verifier at pg_basebackup's priority throughout (what it was before)."""
        idle = verify.IDLE_NICE
        verify.IDLE_NICE = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            ours(dest)
        finally:
            verify.IDLE_NICE = idle

    def verify_alone(backup: BaseBackup) -> None:
        dest = backups.backup_dir(backup)
        check = verify.ArchiveCheck(backups.archive_file(dest, "base"), lambda: True, "bench-verify")
        backups._verify(backup, dest, check, "bench-verify", "verifying")

    kinds = {"bare": bare, "pitrsite": ours, "pitrsite_full_priority": ours_at_full_priority, "pgbb_alone": pgbb_alone,
             # a candidate measured, not pitrsite's: the primary compresses (same files, same zstd level)
             "pgbb_server_zstd": lambda dest: pgbb_alone(dest, "server")}
    results: dict = {"scale": opts.scale, "rounds": []}
    try:
        for n in range(opts.rounds):
            order = list(kinds) if n % 2 == 0 else list(reversed(kinds))
            row: dict = {"order": order}
            for kind in order:
                dest = scratch / f"{kind}-{n}"
                row[kind] = measured(lambda fn=kinds[kind], dest=dest: fn(dest), pm_pid)
                if kind == "pitrsite":
                    backup = last[-1]
                elif kind == "pitrsite_full_priority":
                    shutil.rmtree(backups.backup_dir(last[-1]))
                else:
                    shutil.rmtree(dest)
            row["pitrsite_steps"] = {s["name"]: s["seconds"] for s in backup.steps}
            drop_cache(backups.backup_dir(backup))
            row["verify_cold"] = measured(lambda backup=backup: verify_alone(backup), pm_pid)
            row["verify_warm"] = measured(lambda backup=backup: verify_alone(backup), pm_pid)
            shutil.rmtree(backups.backup_dir(backup))
            print(json.dumps({k: (v["wall_s"] if isinstance(v, dict) and "wall_s" in v else v)
                              for k, v in row.items()}), flush=True)
            results["rounds"].append(row)
        for kind in (*kinds, "verify_cold", "verify_warm"):
            results[f"median_{kind}"] = {key: statistics.median(r[kind][key] for r in results["rounds"])
                                         for key in results["rounds"][0][kind]}
        results["ratio"] = results["median_pitrsite"]["wall_s"] / results["median_bare"]["wall_s"]
        results["ratio_full_priority"] = (results["median_pitrsite_full_priority"]["wall_s"]
                                          / results["median_bare"]["wall_s"])
        results["goal_ratio"] = 1.15
        results["machine"] = {"cpus": os.cpu_count(), "load_at_end": os.getloadavg(),
                              "postgres": pg.run([pg.tool("postgres"), "--version"], step="version",
                                                 as_server=False).stdout.strip()}
        write_results(opts.out, results)
        print(f"pitrsite/bare {results['ratio']:.3f} -> {opts.out}")
    finally:
        driver.down()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
