"""What the benchmarks share: a private data home on free ports, a fleet loaded with pgbench, a timer."""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))


def bench_parser(doc: str, rounds: int, out: Path | None) -> argparse.ArgumentParser:
    """The options every pgbench benchmark takes: --scale, --rounds, --out, --keep."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data home")
    return parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_home(prefix: str) -> Path:
    """A temporary data home the postgres OS user can reach, with Django settings pointing at it."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(home, 0o755)
    os.environ.update(PITR_HOME=str(home), DJANGO_SETTINGS_MODULE="pitrsite.settings",
                      DATABASE_URL=f"sqlite:////{home}/bench.sqlite3", PITR_LOG_LEVEL="WARNING",
                      PITR_PGADMIN="false")  # a bench that starts the services (peers.py) wants no pgAdmin
    os.environ.pop("CELERY_BROKER_URL", None)  # the bench's own Redis (PITR_REDIS_PORT), never a user's
    for name in ("PITR_PRIMARY_PORT", "PITR_STANDBY_PORT", "PITR_RESTORE_PORT", "PITR_REDIS_PORT", "PITR_WEB_PORT"):
        os.environ[name] = str(free_port())
    return home


def fleet_with_pgbench(scale: int):
    """Django set up, the fleet up, pgbench loaded at `scale`; returns the driver (call driver.down())."""
    import django

    django.setup()
    from django.core.management import call_command

    from fleet.driver import get_driver

    call_command("migrate", verbosity=0)
    driver = get_driver()
    driver.up()
    print(f"loading pgbench scale {scale} ...", flush=True)
    try:
        pgbench(driver, "-i", "-s", str(scale), "-q")
    except BaseException:
        driver.down()
        raise
    return driver


def pgbench(driver, *args: str) -> None:
    from django.conf import settings

    from fleet import pg

    pg.run([pg.tool("pgbench"), "-h", "127.0.0.1", "-p", str(driver.layout.port("primary")),
            "-U", settings.PITR_PG_SUPERUSER, *args, settings.PITR_DBNAME],
           step=f"pgbench {' '.join(args)}", env=pg.libpq_env(), timeout=3600)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def clear_target(driver) -> None:
    """The restore target stopped and emptied, untimed, so every restore starts from the same place."""
    from restores.engine import empty_directory

    driver.stop("restore_target", mode="immediate")
    empty_directory(driver.layout.datadir("restore_target"))


def write_results(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "all": [round(v, 3) for v in values]}
