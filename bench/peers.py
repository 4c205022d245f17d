"""pitrsite next to pgBackRest, Barman and the bare PostgreSQL tools: the same primary, workload and target.

    .venv/bin/python bench/peers.py --scale 20 [--rounds 5] [--seconds 30] [--out bench/results/peers-scale20.json]

It brings up pitrsite's fleet in a temporary data home on free loopback ports and loads pgbench at --scale.
The primary archives every WAL file to pgBackRest (archive-push) and to Barman's incoming directory, while
pitrsite captures it with pg_receivewal as always. Then:

  backups:  --rounds rounds in rotated order of: pg_basebackup -Ft -Xstream --compress=client-zstd (bare),
            pgbackrest backup --type=full (process-max 2, its default gz), barman backup (backup_method=postgres),
            scripts/pitr backup (zstd, verified before it is offered; the web service and worker run it).
            Each starts once pitrsite has indexed and uploaded what was captured (the passes beat runs),
            after a sync, and once the archiver has no WAL file left to push, so that none pays for
            indexing, uploads, writeback or archiving left by the one before it.
  workload: pgbench -c 2 for --seconds; T is its last commit. Nothing writes pgbench's tables after T.
  restores: --rounds rounds in rotated order, each tool restoring T from its newest backup into an empty
            directory on its own free port (pitrsite: its restore target), from the same settled state as
            a backup, the page cache dropped before each (sync; echo 3 > /proc/sys/vm/drop_caches). The
            time runs from the restore command's start to a promoted server (pitrsite: to `scripts/pitr
            restore`'s return, which verifies the copy). Every copy's pgbench_history rows and account,
            teller and branch balances are compared with the primary's.

Medians, min and max, ratios, and pitrsite's per-step seconds go to the JSON file; a PNG of the medians with
min-max bars is drawn beside it (matplotlib from .cache/bench-venv, which also holds Barman). Every server it
started is stopped and the data home removed at the end, also on failure (--keep keeps the home).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PROJECT, bench_parser, drop_caches, fleet_with_pgbench, free_port, pgbench, private_home, summary,
    write_results,
)
from peer_tools import Bare, Barman, PgBackRest, Pitrsite, ensure_bench_venv, stop_copy, write_passfile  # noqa: E402

CHECK_SQL = """SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts),
                      (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)"""


def rotated(peers: list, n: int) -> list:
    return peers[n % len(peers):] + peers[:n % len(peers)]


def main() -> None:
    parser = bench_parser(__doc__, rounds=5, out=None)
    parser.add_argument("--seconds", type=int, default=30, help="pgbench run after the backups (WAL to replay)")
    opts = parser.parse_args()
    out = opts.out or PROJECT / "bench" / "results" / f"peers-scale{opts.scale}.json"

    python = ensure_bench_venv()
    home = private_home("pitr-peers-")
    driver = fleet_with_pgbench(opts.scale)
    peers = [Bare(home, driver), PgBackRest(home, driver), Barman(home, driver, python), Pitrsite(home, driver)]
    copies: list[Path] = []
    try:
        results = run(opts, home, driver, peers, copies)
        results["machine"] = machine(peers)
        write_results(out, results)
        subprocess.run([str(python), str(PROJECT / "bench" / "peers_plot.py"), str(out), str(out.with_suffix(".png"))],
                       check=True)
        print(json.dumps(results["ratios"], indent=2))
        print(f"-> {out} and {out.with_suffix('.png')}")
    finally:
        for datadir in copies:
            stop_copy(datadir)
        for peer in peers:
            if hasattr(peer, "teardown"):
                peer.teardown()  # pitrsite's web, worker, beat and Redis
        driver.down()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


def run(opts, home: Path, driver, peers: list, copies: list[Path]) -> dict:
    from fleet import pg
    from tests.restore_helpers import wait_captured

    write_passfile(home)
    for peer in peers:
        peer.setup()
    archive_to([p for p in peers if hasattr(p, "archive_command")], driver)
    backup_s: dict[str, list[float]] = {p.name: [] for p in peers}
    for n in range(opts.rounds):
        for peer in rotated(peers, n):
            settled(driver)
            start = time.perf_counter()
            peer.backup()
            backup_s[peer.name].append(time.perf_counter() - start)
            print(f"backup round {n + 1} {peer.name}: {backup_s[peer.name][-1]:.2f} s", flush=True)

    print(f"pgbench for {opts.seconds} s ...", flush=True)
    port = driver.layout.port("primary")
    with pg.connect(port) as conn:
        wal_before = pg.fetch_row(conn.execute("SELECT pg_current_wal_lsn()"))[0]
    pgbench(driver, "-T", str(opts.seconds), "-c", "2", "-j", "2", "-n")
    with pg.connect(port) as conn:
        target = pg.fetch_row(conn.execute("SELECT max(pg_xact_commit_timestamp(xmin)) FROM pgbench_history"))[0]
        expected = list(pg.fetch_row(conn.execute(CHECK_SQL)))
        # A commit after T, then a switch: plain cp and archive-get read complete segments only, and
        # PostgreSQL will not end recovery before it has seen a commit past a time target.
        conn.execute("SELECT txid_current()")
        wal_bytes = int(pg.fetch_row(conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal_before,)))[0])
        segment = pg.fetch_row(conn.execute("SELECT pg_walfile_name(pg_switch_wal())"))[0]
    wait_archived(driver, segment)
    wait_captured(120)
    # Celery beat indexes the archive every PITR_INDEX_INTERVAL s; a restore only indexes what came after.
    from django.core.management import call_command

    call_command("index_wal", verbosity=0)
    for peer in peers:
        if hasattr(peer, "archive_wal"):
            peer.archive_wal()

    restore_s: dict[str, list[float]] = {p.name: [] for p in peers}
    pitrsite_runs: list[dict] = []
    for n in range(opts.rounds):
        for peer in rotated(peers, n):
            datadir, copy_port = prepare(home, driver, peer, copies)
            settled(driver)
            drop_caches()
            start = time.perf_counter()
            peer.restore(target, datadir, copy_port)
            wait_promoted(copy_port)
            seconds = time.perf_counter() - start
            restore_s[peer.name].append(seconds)
            got = check_rows(copy_port)
            if got != expected:
                raise RuntimeError(f"{peer.name} restored {got}, the primary held {expected} at T")
            if isinstance(peer, Pitrsite):
                pitrsite_runs.append(pitrsite_detail(peer, seconds))
            print(f"restore round {n + 1} {peer.name}: {seconds:.2f} s, rows and balances exact", flush=True)
            stop_copy(datadir)
    return report(opts, peers, backup_s, restore_s, pitrsite_runs, target, expected, wal_bytes)


def archive_to(peers: list, driver) -> None:
    """archive_mode on, pushing every WAL file to each peer in turn (a restart: the capturer reconnects)."""
    from fleet import pg

    command = " && ".join(p.archive_command() for p in peers)
    with pg.connect(driver.layout.port("primary")) as conn:
        conn.execute("ALTER SYSTEM SET archive_mode = on")
        conn.execute(f"ALTER SYSTEM SET archive_command = '{command.replace(chr(39), chr(39) * 2)}'")
    driver.restart("primary")
    for peer in peers:
        peer.after_archiving()


def wait_archived(driver, segment: str, timeout: float = 300) -> None:
    from fleet import pg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pg.connect(driver.layout.port("primary")) as conn:
            last, failed = pg.fetch_row(conn.execute(
                "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver"))
        if last[:24] >= segment:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{segment} not archived after {timeout:.0f} s ({failed} failures: see the primary's log)")


def settled(driver) -> None:
    """Where every backup and restore starts from: pitrsite's background work done, writeback done, the
    primary's archiver idle. So that no tool pays for the one before it: a Barman backup writes 330 MiB at
    scale 20, each backup's WAL switch gives pitrsite's beat a segment to index and its uploader files to copy,
    and pgBackRest's and Barman's archive_command a segment to push."""
    pitrsite_idle()
    os.sync()
    archiver_idle(driver)


def pitrsite_idle(timeout: float = 300) -> None:
    """Everything captured is indexed and copied to pitrsite's storage: the passes beat would run next, run
    here (beat's own, if one holds the lock, is waited for)."""
    from pitrsite.errors import LockBusy
    from tests.restore_helpers import wait_captured
    from walcatalog.indexer import index_archive
    from walcatalog.uploader import upload_pass

    wait_captured(120)
    deadline = time.monotonic() + timeout
    while True:
        try:
            index_archive()
            upload_pass()
            return
        except LockBusy:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pitrsite's index or upload pass still busy after {timeout:.0f} s") from None
            time.sleep(0.2)


def archiver_idle(driver, timeout: float = 120) -> None:
    """No .ready file left in the primary's archive_status: the archive_command has pushed every finished
    segment (a backup's own WAL switches leave one or two for it)."""
    from fleet import pg

    deadline = time.monotonic() + timeout
    with pg.connect(driver.layout.port("primary")) as conn:
        while pg.fetch_row(conn.execute(
                "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"))[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the primary's archiver still has segments to push after {timeout:.0f} s")
            time.sleep(0.1)


def prepare(home: Path, driver, peer, copies: list[Path]) -> tuple[Path, int]:
    """An empty directory and a free port for the copy (pitrsite: its restore target, emptied)."""
    from fleet import pg
    from restores.engine import empty_directory

    if isinstance(peer, Pitrsite):
        driver.stop("restore_target", mode="immediate")
        empty_directory(driver.layout.datadir("restore_target"))
        return driver.layout.datadir("restore_target"), driver.layout.port("restore_target")
    datadir = home / "copies" / peer.name.replace(" ", "-")
    stop_copy(datadir)
    shutil.rmtree(datadir, ignore_errors=True)
    pg.give_to_server(datadir.parent, datadir)
    if datadir not in copies:
        copies.append(datadir)
    return datadir, free_port()


def wait_promoted(port: int, timeout: float = 3600) -> None:
    """Polled every 0.05 s, as pitrsite's engine polls (restores/recovery.py POLL), so no tool gains from its
    wait loop."""
    from fleet import pg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with pg.connect(port, dbname="postgres", timeout=2) as conn:
                if not pg.fetch_row(conn.execute("SELECT pg_is_in_recovery()"))[0]:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the copy on port {port} did not promote")


def check_rows(port: int) -> list:
    from fleet import pg

    with pg.connect(port) as conn:
        return list(pg.fetch_row(conn.execute(CHECK_SQL)))


def pitrsite_detail(peer: Pitrsite, seconds: float) -> dict:
    job = peer.last_job
    first = datetime.fromisoformat(job["steps"][0]["started_at"]).timestamp()
    promoted = datetime.fromisoformat(job["promoted_at"]).timestamp()
    return {"seconds": round(seconds, 3), "before_job_s": round(first - peer.started_wall, 3),
            "to_promoted_s": round(promoted - peer.started_wall, 3),
            "steps": {s["name"]: s["seconds"] for s in job["steps"]}, "wal_files": job["wal_files"]}


def report(opts, peers, backup_s, restore_s, pitrsite_runs, target, expected, wal_bytes) -> dict:
    restore = {name: summary(v) for name, v in restore_s.items()}
    backup = {name: summary(v) for name, v in backup_s.items()}

    def ratio(table: dict, a: str, b: str) -> float:
        return round(table[a]["median"] / table[b]["median"], 3)

    backup_runs = next(p for p in peers if isinstance(p, Pitrsite)).backup_runs
    steps = {name: round(statistics.median(r["steps"].get(name) or 0 for r in pitrsite_runs), 3)
             for name in pitrsite_runs[0]["steps"]}
    return {
        "scale": opts.scale, "rounds": opts.rounds, "pgbench_seconds": opts.seconds, "wal_bytes_replayed": wal_bytes,
        "target": target.isoformat(), "checked": dict(zip(("history_rows", "accounts", "tellers", "branches"),
                                                          expected, strict=True)),
        "restore_s": restore, "backup_s": backup,
        "ratios": {
            "restore_pitrsite_vs_pgbackrest": ratio(restore, "pitrsite", "pgBackRest"),
            "restore_pitrsite_vs_bare": ratio(restore, "pitrsite", "bare tools"),
            "backup_pitrsite_vs_bare": ratio(backup, "pitrsite", "bare tools"),
            # The backup job alone (first step to verified), without the command's start-up (before_job_s):
            "backup_job_pitrsite_vs_bare": round(statistics.median(r["job_s"] for r in backup_runs)
                                                 / backup["bare tools"]["median"], 3),
            "pitrsite_before_job_s": round(statistics.median(r["before_job_s"] for r in pitrsite_runs), 3),
        },
        "goals": {"restore_pitrsite_vs_pgbackrest": 0.8, "restore_pitrsite_vs_bare": 1.0,
                  "backup_pitrsite_vs_bare": 1.15, "backup_job_pitrsite_vs_bare": 1.15, "pitrsite_before_job_s": 0.3},
        "pitrsite_steps_median_s": steps, "pitrsite_runs": pitrsite_runs,
        "pitrsite_backup_runs": backup_runs,
    }


def machine(peers: list) -> dict:
    from fleet import pg

    versions = {p.name: p.version() for p in peers if hasattr(p, "version")}
    postgres = subprocess.run([pg.tool("postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "postgres": postgres, **versions}


if __name__ == "__main__":
    main()
