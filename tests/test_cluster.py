"""WAL of another cluster is refused: two clusters reuse segment names, never system identifiers; each restores exactly.

Two real clusters made with initdb (1 MiB segments, as the suite's fleet); their first segments carry their
own system identifier, which pg_controldata reads from the other end. Only the last test runs them.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.external_server import as_postgres, give
from tests.test_settings_errors import free_port

pytestmark = pytest.mark.django_db

SEGMENT = "000000010000000000000006"  # where initdb's WAL ends with 1 MiB segments: the current one


def _initdb(root: Path) -> tuple[Path, str]:
    root.mkdir()
    give(root)
    as_postgres(["initdb", "-D", str(root / "data"), "--wal-segsize=1", "-A", "trust", "-U", "someone"])
    control = as_postgres(["pg_controldata", str(root / "data")]).stdout
    sysid = next(line.split(":")[1].strip() for line in control.splitlines() if "system identifier" in line)
    return root / "data" / "pg_wal", sysid


@pytest.fixture(scope="module")
def clusters():
    base = Path(tempfile.mkdtemp(prefix="pitr-clusters-"))
    base.chmod(0o755)
    try:
        yield _initdb(base / "a"), _initdb(base / "b")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_header_names_the_cluster(clusters):
    from walcatalog.cluster import read_cluster

    (wal_a, id_a), (wal_b, id_b) = clusters
    assert id_a != id_b
    assert read_cluster(wal_a / SEGMENT) == (15, id_a)
    assert read_cluster(wal_b / SEGMENT) == (15, id_b)


def test_indexer_refuses_wal_of_another_cluster_and_keys_carry_the_cluster(clusters, tmp_path):
    from fleet import servers
    from fleet.models import Server
    from walcatalog import storage as st
    from walcatalog.indexer import index_archive
    from walcatalog.models import WalSegment

    (wal_a, id_a), (wal_b, id_b) = clusters
    archive = tmp_path / "archive"
    archive.mkdir()
    server = Server.objects.create(name="twice", host="127.0.0.1", port=free_port(), user="someone",
                                   archive_dir=str(archive))
    with servers.using(server):
        shutil.copy(wal_a / SEGMENT, archive / SEGMENT)
        first = index_archive(archive)
        assert first.new == 1 and not first.other_cluster, first.as_dict()
        server.refresh_from_db()
        assert (server.pg_major, server.system_identifier) == (15, id_a)  # the first WAL names the cluster
        indexed = WalSegment.objects.get(name=SEGMENT)

        # The same name from a re-initialised cluster (what a second `fleet up` on a new primary writes), and
        # a new name: both refused, loudly, and nothing of the catalog changes.
        (archive / SEGMENT).unlink()
        shutil.copy(wal_b / SEGMENT, archive / SEGMENT)
        nxt = "000000010000000000000007"
        shutil.copy(wal_b / nxt, archive / nxt)
        second = index_archive(archive)
        assert len(second.other_cluster) == 2, second.as_dict()
        assert all(f"system identifier {id_b}" in e and f"is cluster {id_a}" in e for e in second.other_cluster)
        assert not WalSegment.objects.filter(name=nxt).exists()
        assert WalSegment.objects.get(name=SEGMENT).sha256 == indexed.sha256

        # Storage keys: server prefix, then <version>-<system id>/ (pgBackRest's archive/<stanza>/<ver>-<id>/).
        assert st.wal_key(SEGMENT) == f"servers/twice/15-{id_a}/wal/00000001/{SEGMENT}.zst"
        assert st.backup_key("b1", "base.tar") == f"servers/twice/15-{id_a}/backups/b1/base.tar"


def _forget(server) -> None:
    """What `server remove NAME --forget` then `server add NAME` leave: the same name, no catalog, no cluster."""
    from restores.models import RestoreJob
    from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment

    for model in (RestoreJob, StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline):
        model.objects.all().delete()
    server.system_identifier, server.pg_major = "", None
    server.save(update_fields=["system_identifier", "pg_major"])


def test_two_clusters_in_turn_share_one_bucket_and_stay_apart(clusters, tmp_path, settings):
    """The same server name, re-initialised, uploading into the same bucket: each cluster's WAL under its own
    <version>-<system id>/ (the same segment name, other bytes), and a rebuild from the bucket takes back exactly
    the cluster asked for."""
    from fleet import servers
    from fleet.models import Server
    from tests.storage_servers import storage_env, storage_setting
    from walcatalog import storage as st
    from walcatalog.indexer import index_archive
    from walcatalog.models import StorageCopy, WalSegment
    from walcatalog.rebuild import RebuildError, rebuild_from_storage
    from walcatalog.uploader import upload_pass

    settings.STORAGES = {**settings.STORAGES,
                         "archive": storage_setting(storage_env("filesystem", None, tmp_path), tmp_path)}
    settings.PITR_PARTIAL_UPLOAD_INTERVAL = 0
    bucket = st.get_storage()
    archive = tmp_path / "archive"
    archive.mkdir()
    server = Server.objects.create(name="inturn", host="127.0.0.1", port=free_port(), user="someone",
                                   archive_dir=str(archive))
    held = {}
    with servers.using(server):
        for wal, sysid in clusters:  # initialised in turn: the second one after the first was forgotten
            _forget(server)
            shutil.copy(wal / SEGMENT, archive / SEGMENT)
            assert index_archive(archive).new == 1
            result = upload_pass()
            assert result.wal == 1 and not result.errors, result.as_dict()
            key = f"servers/inturn/15-{sysid}/wal/00000001/{SEGMENT}.zst"
            assert st.wal_key(SEGMENT) == key
            held[sysid] = WalSegment.objects.get(name=SEGMENT).sha256
            assert st.fetch_wal(bucket, key, tmp_path / "fetched")[2] == held[sysid]  # the WAL bytes it holds
            (archive / SEGMENT).unlink()
        (id_a, sha_a), (id_b, sha_b) = held.items()
        first = f"servers/inturn/15-{id_a}/wal/00000001/{SEGMENT}.zst"
        assert sha_a != sha_b and st.fetch_wal(bucket, first, tmp_path / "fetched")[2] == sha_a  # nothing overwritten

        _forget(server)
        with pytest.raises(RebuildError, match=f"cluster.s. 15-{id_a}, 15-{id_b}|cluster.s. 15-{id_b}, 15-{id_a}"):
            rebuild_from_storage()
        for sysid, sha in held.items():
            _forget(server)
            rebuilt = rebuild_from_storage(cluster=f"15-{sysid}")
            assert rebuilt.segments == 1 and not rebuilt.skipped, rebuilt.as_dict()
            server.refresh_from_db()
            assert server.system_identifier == sysid
            assert WalSegment.objects.get(name=SEGMENT).sha256 == sha
            assert StorageCopy.objects.get().key == f"servers/inturn/15-{sysid}/wal/00000001/{SEGMENT}.zst"


def _start(root: Path, port: int) -> psycopg.Connection:
    """Run one of the initdb'd clusters (trust logins as `someone`) with a test_data table to write to."""
    with open(root / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                   "track_commit_timestamp = on\n")
    as_postgres(["pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-s", "start"])
    conn = psycopg.connect(host="127.0.0.1", port=port, user="someone", dbname="postgres", autocommit=True)
    conn.execute("CREATE TABLE test_data (id bigserial PRIMARY KEY, payload text NOT NULL)")
    return conn


@pytest.mark.slow
def test_two_clusters_in_turn_each_restore_exactly(clusters, settings, tmp_path):
    """Each cluster in turn protected under the same name, home and bucket (a backup, logged commits,
    captured and uploaded; the archive moved aside before the next cluster's capture), then each rebuilt
    from the bucket by its <version>-<system id> and restored to a logged moment: the rows are exactly
    that cluster's. Last in this file: it starts the module's clusters."""
    from django.conf import settings as live

    from fleet import servers
    from fleet.external import ExternalDriver
    from fleet.models import Server
    from pitrsite.jobs import JobReporter
    from restores.engine import run_restore
    from restores.service import queue_restore
    from restores.targets import RestoreTarget
    from tests.conftest import wait_for
    from tests.restore_helpers import primary_ids_committed, write_rows
    from tests.storage_servers import storage_env, storage_setting
    from walcatalog.backups import queue_backup, run_backup
    from walcatalog.indexer import index_archive
    from walcatalog.rebuild import rebuild_from_storage
    from walcatalog.uploader import upload_pass

    home = Path(live.PITR_HOME) / "servers" / "inturn"  # the postgres account reaches it (pytest's tmp: root's)
    settings.STORAGES = {**settings.STORAGES,
                         "archive": storage_setting(storage_env("filesystem", None, tmp_path), tmp_path)}
    settings.PITR_PARTIAL_UPLOAD_INTERVAL = 0
    server = Server.objects.create(name="inturn", host="127.0.0.1", port=1, user="someone", dbname="postgres",
                                   restore_port=free_port())
    driver, moments = ExternalDriver(server), {}
    try:
        for wal, sysid in clusters:
            server.port = free_port()
            server.save(update_fields=["port"])
            driver = ExternalDriver(server)
            with servers.using(server), _start(wal.parent.parent, server.port) as conn:
                _forget(server)
                driver.up()
                backup = queue_backup()
                run_backup(backup, JobReporter(backup))
                rows = write_rows(conn, 4, f"cluster-{sysid}")
                name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
                last = driver.layout.archive / name
                conn.execute("SELECT pg_switch_wal()")
                wait_for(last.exists, 30, f"{last.name} captured")
                assert not index_archive(driver.layout.archive).other_cluster
                assert not upload_pass().errors
                ids = primary_ids_committed(conn, rows[1].committed_at)
                assert ids == {rows[0].id, rows[1].id}  # two of the four: a moment, not the end
                # Both tables number from 1: the payloads say which cluster a row is from.
                moments[sysid] = rows[1].committed_at, set(conn.execute(
                    "SELECT id, payload FROM test_data WHERE id = ANY(%s)", [list(ids)]).fetchall())
                driver.down()
            as_postgres(["pg_ctl", "-D", str(wal.parent), "-m", "fast", "-w", "-s", "stop"])
            # What a user does before capturing a new cluster under the same name: its archive moved aside.
            driver.layout.archive.rename(home / f"wal_archive-{sysid}")

        for sysid, (moment, expected) in moments.items():
            with servers.using(server):
                _forget(server)
                assert rebuild_from_storage(cluster=f"15-{sysid}").backups == 1
                job = queue_restore(RestoreTarget.from_options(time=moment.isoformat()))
                job = run_restore(job, JobReporter(job))
            assert job.state == "done", job.error
            with psycopg.connect(host=str(driver.socket_dir("restore_target")), port=server.restore_port,
                                 user="someone", dbname="postgres") as copy:
                assert set(copy.execute("SELECT id, payload FROM test_data").fetchall()) == expected
    finally:
        with servers.using(server):
            driver.down()
        shutil.rmtree(home, ignore_errors=True)
