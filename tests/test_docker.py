"""The docker driver for real: the seed's containers on the Docker engine, through the same interface.

The module takes the suite's data home over from the local driver (the two drivers run the same data
directories, archive and backups), brings the fleet up as containers and the app's services as
containers too, and gives the home back to the local driver at the end. It needs the engine and the base
image: `scripts/pitr test` installs docker.io, starts dockerd --bridge=none --iptables=false and builds
pitrsite-base:bookworm (debootstrap) before the suite runs.
"""
from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from django.conf import settings

from chaos.models import ChaosRun, Verdict
from chaos.params import ACTIONS, ChaosError, ChaosParams
from chaos.run import preflight, queue_chaos, run_chaos
from fleet import pg, pgadmin
from fleet.docker import CONTAINERS, DockerDriver, container_name, engine
from fleet.local import LocalDriver
from pitrsite.errors import FleetError
from pitrsite.jobs import JobReporter, JobState
from restores.models import RestoreJob
from tests.conftest import manage, wait_for
from tests.pgadmin_login import logs_in
from tests.restore_helpers import primary_ids_committed, restored_ids, wait_captured, write_rows

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
SERVICE_NAMES = ("redis", "web", "worker", "beat", "pgadmin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def docker_env(django_db_setup, django_db_blocker):
    """Settings (here and in manage.py subprocesses) for the docker driver, with its own service ports."""
    try:
        client = engine()
    except FleetError as exc:
        pytest.fail(f"{exc} (the docker tests need the engine: apt-get install docker.io debootstrap; "
                    "scripts/pitr test installs and starts it)")
    if not client.images.list(name=settings.PITR_DOCKER_BASE_IMAGE.split(":")[0]):
        pytest.fail(f"the base image {settings.PITR_DOCKER_BASE_IMAGE} is missing: scripts/pitr test builds it "
                    "(debootstrap bookworm, docker import)")
    env = {"PITR_FLEET_DRIVER": "docker", "PITR_PGADMIN": "true", "PITR_REDIS_PORT": str(free_port()),
           "PITR_WEB_PORT": str(free_port()), "PITR_PGADMIN_PORT": str(free_port())}
    saved = {name: getattr(settings, name) for name in env}
    for name, value in env.items():
        setattr(settings, name, value if not name.endswith("_PORT") else int(value))
    settings.PITR_PGADMIN = True
    local = LocalDriver()
    was_local = local.state("primary") != "stopped"
    local.down()  # the home's servers and capturer move into containers
    yield env
    for name, value in saved.items():
        setattr(settings, name, value)
    if was_local:
        local.up()
    from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment

    # What the subprocesses and containers committed outside the tests' transactions; the WAL stays.
    with django_db_blocker.unblock():
        ChaosRun.objects.all().delete()
        RestoreJob.objects.all().delete()
        BaseBackup.objects.all().delete()
        for model in (StorageCopy, RestorePoint, WalSegment, Timeline):
            model.objects.all().delete()


@pytest.fixture(scope="module")
def dfleet(docker_env):
    """The fleet up as containers (images built once: a second up builds nothing), and the app's services."""
    driver = DockerDriver()
    out = manage("fleet", "up", env=docker_env).stdout
    again = manage("fleet", "up", env=docker_env).stdout
    assert "built image" not in again and "capturer already running" in again, again
    manage("services", "up", env=docker_env, timeout=600)
    yield driver
    try:
        manage("services", "down", env=docker_env, check=False)
        driver.down()
    except FleetError:
        pass
    print(out)


def project_containers(driver: DockerDriver) -> dict[str, str]:
    label = f"pitrsite.project={settings.PITR_DOCKER_PROJECT}"
    listed = driver.client.containers.list(all=True, filters={"label": label})
    return {c.name: c.status for c in listed}


def test_fleet_up_runs_every_container_of_the_seed(dfleet, docker_env):
    running = project_containers(dfleet)
    names = [container_name(n) for n in (*CONTAINERS.values(), *SERVICE_NAMES)]
    assert {n: running.get(n) for n in names} == {n: "running" for n in names}
    status = json.loads(manage("fleet", "status", "--json", env=docker_env).stdout)
    assert status["driver"] == "docker" and status["capture_problem"] is None
    for role, name in CONTAINERS.items():
        entry = status["roles"][role]
        assert entry["container_name"] == container_name(name) and entry["container_state"] == "running", entry
        assert entry["image"].startswith(("pitrsite-postgres", "pitrsite-capturer")) and entry["container"]
    assert status["roles"]["standby"]["replication"] == "streaming"
    assert status["roles"]["restore_target"]["state"] in ("stopped", "running")  # idle until a restore
    services = json.loads(manage("services", "status", "--json", env=docker_env).stdout)["services"]
    assert all(services[n]["state"] == "running" and services[n]["container"] for n in SERVICE_NAMES), services


def test_a_command_runs_inside_the_nodes_container(dfleet):
    out = dfleet.run_in("primary", ["pg_controldata", str(dfleet.layout.datadir("primary"))])
    assert "in production" in out
    # the container's own view: the Debian paths inside
    assert dfleet.run_in("capturer", ["sh", "-c", "command -v pg_receivewal"]).strip() == \
        "/usr/lib/postgresql/15/bin/pg_receivewal"
    with pytest.raises(FleetError):
        dfleet.run_in("standby", ["pg_ctl", "status", "-D", "/nonexistent"])


def test_capture_has_no_gap_across_docker_restart_of_the_capturer(dfleet, docker_env, db):
    container = dfleet.container("capturer")
    started = container.attrs["State"]["StartedAt"]
    with pg.connect(dfleet.layout.port("primary")) as conn:
        write_rows(conn, 30, "before-restart", switch_every=10)
        dfleet.restart("capturer")  # docker restart
        assert dfleet.container("capturer").attrs["State"]["StartedAt"] != started
        write_rows(conn, 30, "after-restart", switch_every=10)
    wait_captured()
    manage("index_wal", env=docker_env)
    status = json.loads(manage("walstatus", "--json", env=docker_env).stdout)
    assert status["gaps"] == [], status["gaps"]
    assert status["segments"] > 0, status


def test_docker_pause_and_unpause_of_primary_and_standby(dfleet):
    for role in ("primary", "standby"):
        dfleet.pause(role)
        try:
            assert dfleet.state(role) == "paused" and dfleet.container(role).status == "paused"
            with pytest.raises(FleetError):
                pg.connect(dfleet.layout.port(role), timeout=2).close()
        finally:
            dfleet.resume(role)
        assert dfleet.state(role) == "running"
        with pg.connect(dfleet.layout.port(role), timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    with pg.connect(dfleet.layout.port("primary")) as conn:
        write_rows(conn, 5, "after-pause")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    with pg.connect(dfleet.layout.port("standby")) as conn:
        wait_for(lambda: conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0], 30,
                 "the standby to replay past the primary's position after its unpause")


def test_backup_and_restore_into_the_restore_target_container(dfleet, docker_env, db):
    # db, not transactional_db: its flush (TRUNCATE) at teardown deadlocked with beat's indexer inserting.
    backup = json.loads(manage("backup", "--json", env=docker_env).stdout)
    assert backup["state"] == "done" and backup["restorable"]
    with pg.connect(dfleet.layout.port("primary")) as conn:
        rows = write_rows(conn, 16, "docker-restore", switch_every=5)
        wait_captured()
        target = rows[9].committed_at
        job = json.loads(manage("restore", "--target-time", target.isoformat(), "--json", env=docker_env).stdout)
        assert job["state"] == "done" and job["promoted_at"] and job["final_timeline"] > 1, job
        assert restored_ids(dfleet) == primary_ids_committed(conn, target)
    # PostgreSQL runs inside the restore target's container (started there by docker exec).
    assert dfleet.state("restore_target") == "running"
    top = dfleet.container("restore_target").top(ps_args="-o pid,comm")["Processes"]
    assert dfleet.pid("restore_target") in [int(row[0]) for row in top]


def test_pgadmin_answers_its_login_page_on_loopback(dfleet):
    with urllib.request.urlopen(pgadmin.url("/login"), timeout=10) as response:
        page = response.read().decode(errors="replace")
    assert response.status == 200 and "pgAdmin" in page
    servers = json.loads((pgadmin.home(dfleet.layout) / "servers.json").read_text())["Servers"]
    assert {s["Port"] for s in servers.values()} == {dfleet.layout.port(r) for r in ("primary", "standby",
                                                                                     "restore_target")}
    secret = pgadmin.password_file(dfleet.layout)
    assert secret.stat().st_mode & 0o077 == 0 and len(secret.read_text().strip()) >= 18
    assert logs_in(pgadmin.url(""), pgadmin.email(), secret.read_text().strip())


def test_short_chaos_run_with_every_docker_action(dfleet, django_db_blocker):
    actions = (*ACTIONS, "primary_restart")
    params = ChaosParams(writers=3, duration=75, interval=(2.0, 3.0), restores=2, actions=actions,
                         pause=(1.5, 2.5), statement_timeout=1.0, recovery_timeout=90, seed=7)
    with django_db_blocker.unblock():
        run = queue_chaos(params, trigger="command")
        run = run_chaos(run, JobReporter(run))
        run = ChaosRun.objects.get(pk=run.pk)
        assert run.state == JobState.DONE, run.error
        assert run.verdict == Verdict.PASSED, run.summary
        assert {e["action"] for e in run.events} == set(actions), [e["action"] for e in run.events]
        for event in run.events:
            assert event["ok"], event
        kill = next(e for e in run.events if e["action"] == "indexer_kill")
        assert kill["target"] == "worker" and kill["new_pid"] != kill["pid"]  # Docker restarted the container
        assert len(run.verifications) >= 2 and all(c["ok"] for c in run.verifications)
    for role in ("primary", "standby", "capturer"):
        assert dfleet.state(role) == "running", role


def test_fleet_down_leaves_no_container(dfleet, docker_env):
    manage("services", "down", env=docker_env)
    manage("fleet", "down", env=docker_env)
    assert project_containers(dfleet) == {}
    assert all(dfleet.state(role) == "stopped" for role in CONTAINERS)


def test_a_docker_action_on_the_local_driver_is_refused_in_one_line():
    with pytest.raises(ChaosError) as caught:
        preflight(ChaosParams(actions=("primary_restart",)), LocalDriver())
    message = str(caught.value)
    assert "\n" not in message and "docker driver" in message and "local driver" in message

