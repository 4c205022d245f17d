"""Two servers on one installation, the demo fleet and an external one: their WAL carries the same file
names, yet archives, catalogs and storage stay apart; each restore is exact, and each runs on the worker of
its own queue."""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.external_server import make_external
from tests.restore_helpers import restored_ids, wait_captured, write_rows
from tests.test_external_server import captured, restored, write

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def ext(transactional_db, fleet):
    server = make_external(Path(settings.PITR_HOME) / f"external-{uuid.uuid4().hex[:8]}")
    yield server
    manage("fleet", "down", "--server", "sales", check=False)
    server.stop()
    # A later server of this name is another cluster: its WAL must not land beside this one's (refused).
    shutil.rmtree(Path(settings.PITR_HOME) / "servers" / "sales", ignore_errors=True)


def start_worker(name: str, queue: str) -> tuple[subprocess.Popen, Path]:
    logfile = Path(settings.PITR_HOME) / "logs" / f"celery-{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "pitrsite", "worker", "--pool=solo",
                                 "--loglevel=INFO", f"--hostname={name}@%h", "--queues", queue],
                                stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=PROJECT,
                                start_new_session=True)
    wait_for(lambda: b"ready." in logfile.read_bytes() or proc.poll() is not None, 60, f"worker {name} to start")
    assert proc.poll() is None, f"worker {name} exited: see {logfile}"
    return proc, logfile


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_two_servers_stay_apart_and_restore_exactly_each_on_its_worker(fleet, ext, redis_server):
    from fleet import servers
    from fleet.models import Server
    from walcatalog.models import StorageCopy, WalSegment

    manage("server", "add", "sales", "--host", "127.0.0.1", "--port", str(ext.port), "--user", ext.superuser,
           "--dbname", ext.dbname, "--replication-user", ext.repl, "--passfile", str(ext.passfile),
           "--queue", "host-b")
    manage("fleet", "up", "--server", "sales")
    for name in ("demo", "sales"):
        manage("backup", "--server", name, timeout=600)
    from fleet import pg

    with pg.connect(fleet.layout.port("primary")) as conn:
        demo_rows = write_rows(conn, 10, "two-servers", switch_every=2)
    # The demo fleet's cluster is older (its initdb and earlier tests used segments): the external server
    # switches segments until its names reach the demo's, from one row and one switch at a time.
    ext_rows = []
    for _ in range(14):
        ext_rows += write(ext, "items", 1, "two-servers")
        with ext.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
    ext_rows += write(ext, "items", 3, "two-servers-tail")
    wait_captured()
    captured(ext)
    for name in ("demo", "sales"):
        manage("index_wal", "--server", name)
        manage("upload", "--server", name)

    demo, external = Server.objects.get(name="demo"), Server.objects.get(name="sales")
    names = {s: set(WalSegment.all_servers.filter(server=s, is_partial=False).values_list("name", flat=True))
             for s in (demo, external)}
    shared = names[demo] & names[external]
    assert shared, f"the two servers were meant to hold WAL of the same names: {names}"
    one = sorted(shared)[0]
    copies = StorageCopy.all_servers.filter(segment__name=one, kind="wal")
    assert {c.server_id for c in copies} == {demo.pk, external.pk}
    keys = {c.server_id: c.key for c in copies}
    # Each under its server's prefix and its own cluster's "<version>-<system id>/" (two initdbs, two ids).
    assert demo.system_identifier and external.system_identifier != demo.system_identifier
    tail = f"wal/{one[:8]}/{one}.zst"
    assert keys[demo.pk] == f"15-{demo.system_identifier}/{tail}"
    assert keys[external.pk] == f"servers/sales/15-{external.system_identifier}/{tail}"
    assert len({c.sha256 for c in copies}) == 2
    with servers.using(external):  # the scoped managers see one server's rows only
        assert set(WalSegment.objects.filter(is_partial=False).values_list("name", flat=True)) == names[external]

    # Each restore queued from the dashboard's path goes to its server's queue, served by its own worker.
    # Both are queued before the workers start (SQLite: no writer beside this test's transaction).
    from django.db import transaction

    from dashboard.actions import start_restore
    from restores.models import RestoreJob
    from restores.planner import RestoreTarget

    jobs = {}
    for server in (demo, external):
        with servers.using(server), transaction.atomic():
            jobs[server.name] = start_restore(RestoreTarget.from_options(latest=True), "dashboard").pk
    worker_a, _ = start_worker("host-a", "celery")
    worker_b, _ = start_worker("host-b", "host-b")
    try:

        def finished():
            rows = RestoreJob.all_servers.filter(pk__in=jobs.values())
            return all(r.state in ("done", "failed", "interrupted") for r in rows) and rows
        wait_for(finished, 600, "both restores to finish")
        done = {j.server.name: j for j in RestoreJob.all_servers.filter(pk__in=jobs.values())}
        assert done["demo"].state == "done", done["demo"].error
        assert done["sales"].state == "done", done["sales"].error
        assert done["demo"].owner_pid == worker_a.pid and done["sales"].owner_pid == worker_b.pid
    finally:
        stop_worker(worker_a)
        stop_worker(worker_b)

    with pg.connect(fleet.layout.port("primary")) as conn:
        primary_ids = {r[0] for r in conn.execute("SELECT id FROM test_data").fetchall()}
    assert {r.id for r in demo_rows} <= restored_ids(fleet) == primary_ids
    ext_port = json.loads(manage("server", "list", "--json").stdout)[1]["restore_port"]
    assert restored(ext_port, ext, "items") == {r[0] for r in ext_rows}


def test_a_host_brings_up_the_servers_of_its_queues_only(db, settings):
    """`fleet up` and `services up` start the capturers of the external servers this host's worker serves."""
    from fleet import servers
    from fleet.models import Server

    for name, queue in (("a", "celery"), ("b", "host-b"), ("c", "host-b")):
        Server.objects.create(name=name, kind="external", host="127.0.0.1", port=1, queue=queue)
    settings.PITR_WORKER_QUEUES = ""
    assert [s.name for s in servers.on_this_host()] == ["a"]  # a worker without -Q serves Celery's default queue
    settings.PITR_WORKER_QUEUES = "host-b,other"
    assert [s.name for s in servers.on_this_host()] == ["b", "c"]


def test_a_second_host_runs_only_its_worker(settings):
    """PITR_SERVICES=worker: host B starts no beat (one beat schedules every server) and no web."""
    from fleet import services
    from pitrsite.errors import ServiceError

    settings.PITR_SERVICES = ("worker",)
    assert services.managed_services() == ("worker",)
    settings.PITR_SERVICES = ("worker", "bakery")
    with pytest.raises(ServiceError, match="unknown service 'bakery'"):
        services.managed_services()
