"""Disaster recovery from storage alone: a new home with only the storage settings restores a moment exactly.

The session fleet writes known rows and uploads them to a fresh bucket (moto server, Azurite). A second
data home — its own PITR_HOME, its own SQLite catalog, no local archive, no primary, none of the fleet's
passwords — then runs `rebuild_catalog --from-storage` and `restore --server demo --target-time T --json`, as
on a new machine. Its restored copy is read through its private socket (the trust line pitrsite writes).
"""
from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings

from tests.restore_helpers import empty_catalog, primary_ids_committed
from tests.storage_scenario import make_scenario, narrow_catalog
from tests.storage_servers import azurite_server, moto_server, storage_env, storage_setting  # noqa: F401
from tests.test_settings_errors import clean_env, home, run_manage  # noqa: F401
from walcatalog.uploader import upload_pass

pytestmark = [pytest.mark.fleet, pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(scope="module")
def scenario(fleet, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield make_scenario(fleet, backups=1, rows_between=12, switch_every=4)
        empty_catalog()


@pytest.mark.parametrize("backend", ["s3", "azure"])
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
