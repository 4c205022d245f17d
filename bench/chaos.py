"""The long chaos run: writers + injected failures for minutes, then at least 20 restores checked row for row.

    PITR_HOME=/tmp/pitr-chaos-long ... .venv/bin/python bench/chaos.py \
[--out bench/results/chaos-long.json] [-- CHAOS OPTIONS]

Needs the fleet and the app services running in that PITR_HOME (`scripts/pitr up`, or `manage.py fleet up`
and `manage.py services up`): the indexer_kill action SIGKILLs the supervised Celery worker. Runs
`manage.py chaos --json` with the chaos options (default: 8 writers, 720 s of chaos, actions every 30-60 s,
24 restores), then writes the run's report (parameters, every action with its recovery, every restored
moment with its checks, the verdict) plus the command and wall time to --out. Exits like the chaos command:
non-zero when any verification failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_OPTIONS = ["--writers", "8", "--duration", "720", "--interval", "30-60", "--restores", "24"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "chaos-long.json")
    parser.add_argument("chaos", nargs=argparse.REMAINDER, help="options for manage.py chaos (after --)")
    opts = parser.parse_args(argv)
    chaos_opts = [a for a in opts.chaos if a != "--"] or DEFAULT_OPTIONS
    command = [sys.executable, str(PROJECT / "manage.py"), "chaos", "--json", *chaos_opts]
    began = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat()
    proc = subprocess.run(command, cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    wall = round(time.monotonic() - began, 1)
    try:
        run = json.loads(proc.stdout)
    except ValueError:
        print(f"chaos printed no JSON (exit {proc.returncode}):\n{proc.stdout}", file=sys.stderr)
        return proc.returncode or 1
    report = json.loads((Path(run["run_dir"]) / "report.json").read_text())
    driver = subprocess.run([sys.executable, str(PROJECT / "manage.py"), "fleet", "driver"], cwd=PROJECT,
                            stdout=subprocess.PIPE, text=True).stdout.strip()
    result = {"command": "python manage.py chaos " + " ".join(chaos_opts), "fleet_driver": driver,
              "started_at": started_at,
              "wall_seconds": wall, "exit_status": proc.returncode, "verdict": report["verdict"],
              "passed": report["passed"], "restores": report["restores"], "summary": report["summary"],
              "writes": run["writes_count"], "unknown_outcomes": run["unknown_count"],
              "actions": _action_stats(report["events"]), "report": report}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{report['summary']}\nwall time {wall:.0f} s; written to {opts.out}")
    return proc.returncode


def _action_stats(events: list[dict]) -> dict:
    stats: dict[str, dict] = {}
    for event in events:
        entry = stats.setdefault(event["action"], {"count": 0, "recovered": 0, "max_recovery_seconds": 0.0})
        entry["count"] += 1
        if event.get("ok"):
            entry["recovered"] += 1
            entry["max_recovery_seconds"] = max(entry["max_recovery_seconds"], event.get("recovery_seconds") or 0.0)
    return stats


if __name__ == "__main__":
    sys.exit(main())
