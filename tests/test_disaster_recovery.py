"""Disaster recovery from storage alone: a new home with only the storage settings restores a moment exactly.

The session fleet writes known rows and uploads them to a fresh bucket (moto server, Azurite). A second
data home — its own PITR_HOME, its own SQLite catalog, no local archive, no primary, none of the fleet's
passwords — then runs `rebuild_catalog --from-storage` and `restore --server demo --target-time T --json`, as
on a new machine. Its restored copy is read through its private socket (the trust line pitrsite writes).

`--as-new-primary` goes on from there: the copy becomes server dr, takes writes, is captured and backed up,
restores exactly to a moment after its promotion, and a third home with no entry for dr rebuilds it from
storage and restores that moment too. On request, dr gets a hot standby streaming through its own slot.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings

from pitrsite import procs

from tests.conftest import wait_for
from tests.restore_helpers import empty_catalog, primary_ids_committed, write_rows
from tests.storage_scenario import make_scenario, narrow_catalog
from tests.storage_servers import azurite_server, moto_server, storage_env, storage_setting  # noqa: F401
from tests.test_settings_errors import clean_env, free_port, home, one_line_error, run_manage  # noqa: F401
from walcatalog.uploader import upload_pass

pytestmark = [pytest.mark.fleet, pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(scope="module")
def scenario(fleet, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield make_scenario(fleet, backups=1, rows_between=12, switch_every=4)
        empty_catalog()


# S3: test_restored_copy_becomes_a_new_primary starts with the same fresh-home restore (and checks the same).
@pytest.mark.parametrize("backend", ["azure"])
def test_fresh_home_restores_a_moment_from_storage_alone(backend, scenario, primary, settings, request, tmp_path,
                                                         home):  # noqa: F811
    narrow_catalog(scenario["backup"])
    env = storage_env(backend, request, tmp_path)
    settings.STORAGES = {**settings.STORAGES, "archive": storage_setting(env, tmp_path)}
    result = upload_pass()
    assert result.uploaded and not result.errors, result.as_dict()
    moment = scenario["rows"][len(scenario["rows"]) // 2].committed_at

    new = {**clean_env(home), **env, "PITR_DEMO_SERVER": django_settings.PITR_DEMO_SERVER,
           "PITR_DBNAME": django_settings.PITR_DBNAME, "PITR_PG_SUPERUSER": django_settings.PITR_PG_SUPERUSER}
    # No password of the original: the new home's secrets are its own, and it never asks for the fleet's.
    assert run_manage(new, "migrate", "-v0").returncode == 0
    rebuilt = run_manage(new, "rebuild_catalog", "--from-storage", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["backups"] == 1
    # `fleet up` here would initialise a new cluster over the one the catalog knows: refused, nothing made.
    refused = one_line_error(run_manage(new, "fleet", "up"))
    assert "holds the history of cluster 15-" in refused and "--as-new-primary NAME" in refused, refused
    assert not (home / "primary").exists()
    try:
        done = run_manage(new, "restore", "--server", django_settings.PITR_DEMO_SERVER, "--target-time",
                          moment.isoformat(), "--json")
        job = json.loads(done.stdout)
        assert done.returncode == 0 and job["state"] == "done", (job, done.stderr)
        assert job["source"] == "storage"
        assert not (home / "primary").exists() and not any((home / "wal_archive").glob("0*"))
        target = Path(home) / "restore_target"
        with psycopg.connect(host=str(target / "socket"), port=int(new["PITR_RESTORE_PORT"]),
                             user=django_settings.PITR_PG_SUPERUSER, dbname=django_settings.PITR_DBNAME) as conn:
            restored = {r[0] for r in conn.execute("SELECT id FROM test_data").fetchall()}
        assert restored == primary_ids_committed(primary, moment)
    finally:
        run_manage(new, "fleet", "down")


def _manage_json(env: dict, *args: str) -> dict:
    done = run_manage(env, *args, "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == 0, (doc, done.stderr)
    return doc


def _switch_and_wait(conn, archive: Path, timeout: float = 30) -> None:
    """Complete the current segment and wait until the capturer wrote it whole into `archive`."""
    name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    conn.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while not (archive / name).exists():
        assert time.monotonic() < deadline, f"{name} never reached {archive}"
        time.sleep(0.2)


def _restored_ids(target: Path, port: str | int) -> set[int]:
    with psycopg.connect(host=str(target / "socket"), port=int(port), user=django_settings.PITR_PG_SUPERUSER,
                         dbname=django_settings.PITR_DBNAME) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM test_data").fetchall()}


def test_restored_copy_becomes_a_new_primary(scenario, primary, settings, request, tmp_path, home):  # noqa: F811
    narrow_catalog(scenario["backup"])
    env = storage_env("s3", request, tmp_path)
    settings.STORAGES = {**settings.STORAGES, "archive": storage_setting(env, tmp_path)}
    assert not upload_pass().errors
    moment = scenario["rows"][len(scenario["rows"]) // 2].committed_at
    base = {"PITR_DEMO_SERVER": django_settings.PITR_DEMO_SERVER, "PITR_DBNAME": django_settings.PITR_DBNAME,
            "PITR_PG_SUPERUSER": django_settings.PITR_PG_SUPERUSER}
    new = {**clean_env(home), **env, **base}
    port, restore_port = free_port(), free_port()
    third_home = Path(tempfile.mkdtemp(prefix="pitr-dr3-"))
    third_home.chmod(0o755)
    third = {**clean_env(third_home), **env, **base}
    dr = home / "servers" / "dr"
    try:
        assert run_manage(new, "migrate", "-v0").returncode == 0
        _manage_json(new, "rebuild_catalog", "--from-storage")
        job = _manage_json(new, "restore", "--target-time", moment.isoformat(), "--as-new-primary", "dr",
                           "--port", str(port), "--restore-port", str(restore_port))
        assert job["state"] == "done" and job["new_primary"] == "dr" and job["source"] == "storage", job
        assert not (home / "primary").exists() and not any((home / "wal_archive").glob("0*"))
        assert not (home / "restore_target" / "data" / "PG_VERSION").exists()  # moved out of the restore target

        # The copy is a primary on its own port: it takes writes, and its capturer fills dr's archive.
        with psycopg.connect(host=str(dr / "primary" / "socket"), port=port, user=base["PITR_PG_SUPERUSER"],
                             dbname=base["PITR_DBNAME"], autocommit=True) as conn:
            assert {r[0] for r in conn.execute("SELECT id FROM test_data")} == primary_ids_committed(primary, moment)
            write_rows(conn, 3, "dr-before-backup")
            _switch_and_wait(conn, dr / "wal_archive")
            backup = _manage_json(new, "backup", "--server", "dr")
            assert backup["state"] == "done", backup
            after = write_rows(conn, 6, "dr-after-backup")
            _switch_and_wait(conn, dr / "wal_archive")
            later = after[2].committed_at
            expected = primary_ids_committed(conn, later)
        # A later restore of the new primary, to a moment after its promotion: exact.
        again = _manage_json(new, "restore", "--server", "dr", "--target-time", later.isoformat())
        assert again["state"] == "done" and again["final_timeline"] == job["final_timeline"] + 1, again
        assert _restored_ids(dr / "restore_target", restore_port) == expected
        with sqlite3.connect(home / "pitrsite.sqlite3") as db:  # the restore indexed dr's archive first
            timelines = {r[0] for r in db.execute(
                "SELECT DISTINCT s.timeline FROM walcatalog_walsegment s JOIN fleet_server f ON f.id = s.server_id "
                "WHERE f.name = 'dr' AND NOT s.is_partial")}
            retired = db.execute("SELECT o.retired_at IS NOT NULL, n.name FROM fleet_server o JOIN fleet_server n "
                                 "ON n.id = o.successor_id WHERE o.name = ?", [base["PITR_DEMO_SERVER"]]).fetchone()
        assert timelines == {job["final_timeline"]} and retired == (1, "dr")

        # A hot standby of dr, on request: cloned through its own slot, it replays what dr commits, and
        # `server check` and `fleet status` say it streams.
        standby_port = free_port()
        made = _manage_json(new, "server", "standby", "dr", "--port", str(standby_port))
        assert made["standby_port"] == standby_port, made
        with psycopg.connect(host=str(dr / "primary" / "socket"), port=port, user=base["PITR_PG_SUPERUSER"],
                             dbname=base["PITR_DBNAME"], autocommit=True) as conn:
            row = write_rows(conn, 1, "dr-for-its-standby")[0]
        with psycopg.connect(host=str(dr / "standby" / "socket"), port=standby_port, user=base["PITR_PG_SUPERUSER"],
                             dbname=base["PITR_DBNAME"], autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            wait_for(lambda: conn.execute("SELECT 1 FROM test_data WHERE id = %s", [row.id]).fetchone(), 30,
                     "dr's row on its standby")
        checks = {c["check"]: c for c in _manage_json(new, "server", "check", "dr")["checks"]}
        assert checks["standby"]["ok"] and "through slot pitr_dr_standby" in checks["standby"]["line"], checks
        status = _manage_json(new, "fleet", "status", "--server", "dr")
        assert status["roles"]["standby"]["replication"] == "streaming", status
        assert {s["slot_name"]: s["active"] for s in status["slots"]} == {"pitr_dr": True, "pitr_dr_standby": True}

        # A new machine knows no server dr: its entry is rebuilt from storage, and the same moment comes back.
        uploaded = _manage_json(new, "upload", "--server", "dr")
        assert uploaded["uploaded"] and not uploaded["errors"], uploaded
        assert run_manage(third, "migrate", "-v0").returncode == 0
        rebuilt = _manage_json(third, "rebuild_catalog", "--from-storage", "--server", "dr",
                               "--restore-port", third["PITR_RESTORE_PORT"])
        assert rebuilt["backups"] == 1, rebuilt
        far = _manage_json(third, "restore", "--server", "dr", "--target-time", later.isoformat())
        assert far["state"] == "done" and far["source"] == "storage", far
        assert _restored_ids(third_home / "servers" / "dr" / "restore_target", third["PITR_RESTORE_PORT"]) == expected

        # `server remove` of a primary pitrsite runs is refused while it runs; stopped, nothing of it is left
        # running once it is removed (its standby, capturer and restore target included).
        refused = run_manage(new, "server", "remove", "dr", "--forget")
        assert refused.returncode == 1 and "stop it first with `python manage.py fleet down --server dr`" in \
            refused.stderr, refused.stderr
        pids = [procs.read_pid(dr / role / "data" / "postmaster.pid") for role in ("standby", "restore_target")]
        pids.append(procs.read_pid(dr / "run" / "capturer.supervisor.pid"))
        assert all(pid and procs.alive(pid) for pid in pids), pids
        stopped = run_manage(new, "fleet", "stop", "primary", "--server", "dr")  # only the primary
        assert stopped.returncode == 0, stopped.stderr
        removed = run_manage(new, "server", "remove", "dr", "--forget")
        assert removed.returncode == 0 and "server dr removed" in removed.stdout, removed.stderr
        assert not [pid for pid in pids if procs.alive(pid)], pids
    finally:
        run_manage(new, "fleet", "down")
        run_manage(third, "fleet", "down")
        shutil.rmtree(third_home, ignore_errors=True)


def test_a_retired_server_takes_no_backup_and_starts_no_capture(db):
    from django.utils import timezone

    from fleet import servers
    from fleet.models import Server
    from pitrsite.errors import FleetError
    from walcatalog.backups import queue_backup

    heir = Server.objects.create(name="heir", kind="promoted")
    old = Server.objects.create(name="old", retired_at=timezone.now(), successor=heir)
    refused = r"server old was retired at .*: no backups of it \(its history stays restorable\); its successor is heir"
    with servers.using(old), pytest.raises(FleetError, match=refused):
        queue_backup()
    with pytest.raises(FleetError, match="no capture of it"):
        from fleet.promoted import PromotedDriver

        PromotedDriver(Server(name="x", kind="promoted", port=1, retired_at=timezone.now())).up()


def test_a_standby_is_for_a_promoted_server_on_a_port_of_its_own(db):
    from fleet.models import Server
    from fleet.promoted import add_standby
    from pitrsite.errors import FleetError

    external = Server.objects.create(name="ext", port=free_port(), restore_port=free_port())
    with pytest.raises(FleetError, match="server ext is not a promoted server .*its own DBA's"):
        add_standby(external, free_port())
    promoted = Server.objects.create(name="p", kind="promoted", port=free_port(), restore_port=free_port())
    with pytest.raises(FleetError, match=f"--port {promoted.restore_port} is its restore target's port"):
        add_standby(promoted, promoted.restore_port)
    promoted.refresh_from_db()
    assert promoted.standby_port is None
