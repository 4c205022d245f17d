"""What `scripts/pitr restore|backup` costs before its job starts (issue 13: at most 0.3 s).

    .venv/bin/python bench/before_job.py [--rounds 5] [--scale 1] [--out bench/results/before_job.json]

It brings up the fleet (pgbench at --scale) and pitrsite's services (Redis, web, worker, beat, as `scripts/pitr
up` does) in a temporary data home on free ports, takes one backup, writes with pgbench, then --rounds times
each, the page cache dropped before every run (sync; echo 3 > /proc/sys/vm/drop_caches):
  restore: `scripts/pitr restore --target-time T --json`, T pgbench's last commit
  backup:  `scripts/pitr backup --json`
  client:  `/usr/bin/python3 -I -S pitrsite/client.py` alone (its usage line: the interpreter and its imports)
before_job_s runs from the command's start to the job's first step's started_at, split into to_row_s (to the job
row's created_at: interpreter, client, HTTP, the view's parsing and validation), to_claim_s (to its started_at:
Celery's message, the worker taking it, the reaper's look) and to_step_s (to the first step). Medians, min, max
go to the JSON file. Everything it started is stopped and the home removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, drop_caches, fleet_with_pgbench, pgbench, private_home, summary  # noqa: E402
from peer_tools import Pitrsite  # noqa: E402


def split(job: dict, started: float) -> dict:
    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()
    first = at(job["steps"][0]["started_at"])
    return {"before_job_s": round(first - started, 3), "to_row_s": round(at(job["created_at"]) - started, 3),
            "to_claim_s": round(at(job["started_at"]) - at(job["created_at"]), 3),
            "to_step_s": round(first - at(job["started_at"]), 3), "state": job["state"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "before_job.json")
    opts = parser.parse_args()
    home = private_home("pitr-before-job-")
    driver = fleet_with_pgbench(opts.scale)
    peer = Pitrsite(home, driver)
    try:
        results = run(opts, driver, peer)
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: v for k, v in results.items() if k.endswith("_s")}, indent=2))
        print(f"-> {opts.out}")
    finally:
        peer.teardown()
        driver.down()
        shutil.rmtree(home, ignore_errors=True)


def run(opts, driver, peer: Pitrsite) -> dict:
    from fleet import pg
    from tests.restore_helpers import wait_captured

    peer.setup()
    peer.pitr("backup", "--json")
    pgbench(driver, "-T", "3", "-c", "2", "-n")
    with pg.connect(driver.layout.port("primary")) as conn:
        target = pg.fetch_row(conn.execute("SELECT max(pg_xact_commit_timestamp(xmin)) FROM pgbench_history"))[0]
        conn.execute("SELECT txid_current()")  # a commit past T, as bench/peers.py does
        conn.execute("SELECT pg_switch_wal()")
    wait_captured(120)
    runs: dict[str, list[dict]] = {"restore": [], "backup": []}
    client: list[float] = []
    for n in range(opts.rounds):
        for kind, args in (("restore", ["restore", "--target-time", target.isoformat(), "--json"]),
                           ("backup", ["backup", "--json"])):
            drop_caches()
            started = time.time()
            runs[kind].append(split(json.loads(peer.pitr(*args)), started))
            print(f"{kind} {n + 1}: {runs[kind][-1]}", flush=True)
        drop_caches()
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-I", "-S", str(PROJECT / "pitrsite" / "client.py")], capture_output=True)
        client.append(time.perf_counter() - t0)
    out: dict = {"rounds": opts.rounds, "scale": opts.scale, "runs": runs, "client_start_s": summary(client)}
    for kind, rows in runs.items():
        for key in ("before_job_s", "to_row_s", "to_claim_s", "to_step_s"):
            out[f"{kind}_{key}"] = summary([r[key] for r in rows])
    out["goal"] = {"before_job_s": 0.3,
                   "met": all(statistics.median(r["before_job_s"] for r in rows) <= 0.3 for rows in runs.values())}
    return out


if __name__ == "__main__":
    main()
