"""An existing server, not started by pitrsite: added, captured, backed up, restored; its copy isolated."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from fleet import pgconf
from restores.recovery import login_refused
from tests.conftest import manage, wait_for
from tests.external_server import External, free_port, make_external

pytestmark = [pytest.mark.slow]


def write(ext: External, table: str, count: int, tag: str) -> list[tuple[int, datetime, str]]:
    """(id, commit time, LSN after the commit) of single-row transactions."""
    rows = []
    with ext.connect() as conn:
        for i in range(count):
            row_id, xid = conn.execute(f"INSERT INTO {table} (payload) VALUES (%s) RETURNING id, xmin::text",
                                       [f"{tag}-{i}"]).fetchone()
            at, lsn = conn.execute("SELECT pg_xact_commit_timestamp(%s::xid), pg_current_wal_lsn()::text",
                                   [xid]).fetchone()
            rows.append((row_id, at, lsn))
            time.sleep(0.005)
    return rows


def captured(ext: External) -> None:
    """Until our pg_receivewal has flushed everything the original wrote."""
    def done():
        with ext.connect("postgres") as conn:
            row = conn.execute("SELECT flush_lsn >= pg_current_wal_lsn() FROM pg_stat_replication "
                               "WHERE application_name = 'pg_receivewal'").fetchone()
        return row and row[0]
    wait_for(done, 60, "the capturer of the external server to flush all WAL")


def restored(port: int, ext: External, table: str) -> set[int]:
    with ext.connect(port=port) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {table}").fetchall()}


def target_dir() -> Path:
    return Path(settings.PITR_HOME) / "servers" / "ext" / "restore_target"


def restore(*target: str) -> dict:
    return json.loads(manage("restore", "--server", "ext", *target, "--json", timeout=600).stdout)


@pytest.fixture
def ext(transactional_db):
    # Under the test home: the postgres account must reach it (pytest's tmp dirs are root's only).
    server = make_external(Path(settings.PITR_HOME) / f"external-{uuid.uuid4().hex[:8]}")
    yield server
    manage("fleet", "down", "--server", "ext", check=False)
    server.stop()
    # The next test's "ext" is another cluster: its WAL must not land beside this one's (the indexer refuses it).
    shutil.rmtree(Path(settings.PITR_HOME) / "servers" / "ext", ignore_errors=True)


def test_external_server_protected_and_restored_isolated(ext):
    added = manage("server", "add", "ext", "--host", "127.0.0.1", "--port", str(ext.port), "--user", ext.superuser,
                   "--dbname", ext.dbname, "--replication-user", ext.repl, "--passfile", str(ext.passfile))
    assert "server ext added (slot pitr_ext created" in added.stdout
    assert "wal_level is replica" in added.stdout and "s3cret" not in added.stdout + added.stderr
    listed = {s["name"]: s for s in json.loads(manage("server", "list", "--json").stdout)}
    assert set(listed) == {"demo", "ext"} and listed["ext"]["port"] == ext.port
    restore_port = listed["ext"]["restore_port"]

    # Two servers now: a command without --server names them instead of guessing.
    ambiguous = manage("walstatus", check=False)
    assert ambiguous.returncode != 0 and "name one with --server (demo, ext)" in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1
    chaos = manage("chaos", "--server", "ext", "--duration", "5", check=False)
    assert chaos.returncode != 0 and "ext is an external server" in chaos.stderr

    manage("fleet", "up", "--server", "ext")
    status = json.loads(manage("fleet", "status", "--json", check=False).stdout)
    brief = {s["name"]: s for s in status["servers"]}
    assert brief["ext"]["port"] == ext.port and brief["ext"]["restore_port"] == restore_port
    assert set(brief) == {"demo", "ext"} and brief["ext"]["capture"]
    before = write(ext, "items", 5, "before")
    backup = json.loads(manage("backup", "--server", "ext", "--json", timeout=600).stdout)
    assert backup["state"] == "done" and backup["manifest_verified"]
    far = write(ext, "far", 3, "far")  # in the tablespace
    middle = write(ext, "items", 10, "middle")
    with ext.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
    tail = write(ext, "items", 5, "tail")  # in the .partial
    captured(ext)
    archived_by_original = sorted(p.name for p in ext.own_archive.iterdir())

    rows = before + middle + tail
    by_time = middle[4]
    job = restore("--target-time", by_time[1].isoformat())
    assert job["state"] == "done", job
    assert restored(restore_port, ext, "items") == {r[0] for r in rows if r[1] <= by_time[1]}
    assert restored(restore_port, ext, "far") == {r[0] for r in far}

    by_lsn = middle[7]
    job = restore("--target-lsn", by_lsn[2])
    assert job["state"] == "done", job
    assert restored(restore_port, ext, "items") == {r[0] for r in rows if r[0] <= by_lsn[0]}

    # As on a new machine: no password of the original known to pitrsite (the passfile gone). The copy is
    # verified through its own private socket, trusted by a line written ahead of the original's.
    hidden = ext.passfile.with_name("pgpass.hidden")
    ext.passfile.rename(hidden)
    try:
        began = time.monotonic()
        job = restore("--latest")
    finally:
        hidden.rename(ext.passfile)
    assert job["state"] == "done", job
    assert time.monotonic() - began < 300  # never the PITR_RESTORE_TIMEOUT wait of a refused login
    # Users keep the original's roles and scram passwords over TCP (the original's pg_hba.conf lines follow).
    assert restored(restore_port, ext, "items") == {r[0] for r in rows}
    hba = (target_dir() / "data" / "pg_hba.conf").read_text()
    assert hba.startswith(pgconf.SELF_LOGIN) and "scram-sha-256" in hba.removeprefix(pgconf.SELF_LOGIN)
    socket_dir = target_dir() / "socket"
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    # A refused login is told apart from a server still starting up: the restore fails at once instead.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=restore_port, user=ext.superuser, password="wrong", dbname="postgres")
    assert login_refused(refused.value)
    with pytest.raises(psycopg.OperationalError) as nothing:
        psycopg.connect(host="127.0.0.1", port=free_port(), user=ext.superuser, password="x", dbname="postgres")
    assert not login_refused(nothing.value)

    with ext.connect(port=restore_port) as copy:
        # current_setting() shows archive_command as "(disabled)" once archive_mode is off: read the values.
        settings = dict(copy.execute("SELECT name, setting FROM pg_file_settings WHERE applied").fetchall())
        settings.update(copy.execute("SELECT name, setting FROM pg_settings WHERE name IN ('data_directory', "
                                     "'wal_segment_size', 'archive_mode')").fetchall())
        location = copy.execute("SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                                "WHERE spcname = 'outside'").fetchone()[0]
        shared_buffers = copy.execute("SHOW shared_buffers").fetchone()[0]
    assert settings["archive_mode"] == "off" and settings["archive_command"] == ""
    assert settings["primary_conninfo"] == "" and settings["primary_slot_name"] == ""
    assert settings.get("restore_command", "") == ""
    assert settings["recovery_min_apply_delay"] == "0" and settings["recovery_end_command"] == ""
    # Replay's own settings are dropped after promotion and the original's apply again; replay's larger
    # shared_buffers (the original has PostgreSQL's 128 MB) needs a restart to go.
    assert settings["max_wal_size"] == "3GB" and settings["checkpoint_timeout"] == "7min", settings
    assert shared_buffers == "512MB" and "shared_buffers" not in settings
    assert str(ext.datadir) not in settings["data_directory"]
    assert settings["wal_segment_size"] == str(32 << 20)
    assert "servers/ext/restore_target" in location and str(ext.tablespace) not in location

    # The original: untouched, still running, its own archive fed by itself only, no slot of the copy's.
    with ext.connect() as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM items").fetchall()} == {r[0] for r in rows}
        assert conn.execute("SELECT count(*) FROM far").fetchone()[0] == len(far)
        slots = [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()]
    assert slots == ["pitr_ext"]
    # The copies promoted onto new timelines; had one archived, its files would be in the original's archive.
    assert archived_by_original and not [p.name for p in ext.own_archive.iterdir() if not p.name.startswith("00000001")]


def one_line_error(*args: str) -> str:
    result = manage(*args, check=False)
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_input_is_one_line_and_creates_nothing(ext, tmp_path):
    from fleet.models import Server
    from tests.external_server import BIN, free_port, give, make_external

    with ext.connect("postgres") as conn:
        conn.execute("CREATE ROLE no_repl LOGIN PASSWORD 'nr'")
        conn.execute("SELECT pg_create_physical_replication_slot('held_elsewhere', true)")
    passfile = ext.root / "pgpass2"
    passfile.write_text(ext.passfile.read_text() + f"127.0.0.1:{ext.port}:*:no_repl:nr\n")
    wrong = ext.root / "pgpass-wrong"
    wrong.write_text(f"127.0.0.1:{ext.port}:*:{ext.superuser}:not-the-password\n")
    for path in (passfile, wrong):
        path.chmod(0o600)
        give(path)
    # Another client streaming from a slot: pg_receivewal of someone else.
    other = ext.root / "other-receiver"
    other.mkdir()
    give(other)
    receiver = subprocess.Popen(
        [str(BIN / "pg_receivewal"), "-h", "127.0.0.1", "-p", str(ext.port), "-U",
         ext.repl, "--no-password", "-D", str(other), "--slot=held_elsewhere"],
        env={"PGPASSFILE": str(ext.passfile), "PATH": "/usr/bin:/bin"}, user="postgres", stderr=subprocess.DEVNULL)
    minimal = make_external(ext.root.parent / f"{ext.root.name}-minimal",
                            "wal_level = minimal\nmax_wal_senders = 0\narchive_mode = off\n")
    try:
        def slot_active():
            with ext.connect("postgres") as conn:
                return conn.execute("SELECT active FROM pg_replication_slots "
                                    "WHERE slot_name = 'held_elsewhere'").fetchone()[0]
        wait_for(slot_active, 30, "the other client to hold its slot")

        def add(name: str, *extra: str, port: int | None = None, pf=None) -> str:
            return one_line_error("server", "add", name, "--host", "127.0.0.1", "--port", str(port or ext.port),
                                  "--user", ext.superuser, "--dbname", ext.dbname, "--passfile",
                                  str(pf or passfile), *extra)

        assert "cannot connect" in add("bad1", port=free_port())
        assert "password authentication failed" in add("bad2", pf=wrong)
        assert "wal_level is minimal: set wal_level = replica" in add("bad3", port=minimal.port, pf=minimal.passfile)
        assert "replication connection as no_repl refused" in add("bad4", "--replication-user", "no_repl")
        assert "slot held_elsewhere is held by another client" in add("bad5", "--replication-user", ext.repl,
                                                                      "--slot", "held_elsewhere")
        assert "server demo exists already" in add("demo")
        leftover = Path(settings.PITR_HOME) / "servers" / "reused" / "wal_archive"
        leftover.mkdir(parents=True)
        (leftover / "000000010000000000000001").write_bytes(b"another cluster's WAL")
        assert "holds WAL of an earlier server named reused" in add("reused", "--replication-user", ext.repl)
        assert "unknown server 'nope'" in one_line_error("walstatus", "--server", "nope")
        assert list(Server.objects.values_list("name", flat=True)) == ["demo"]
        with ext.connect("postgres") as conn:
            slots = {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()}
        assert slots == {"held_elsewhere"}, "a refused server add created a slot"
    finally:
        receiver.terminate()
        receiver.wait(10)
        minimal.stop()


def test_external_server_own_settings_drill_metrics_and_alerts(ext):
    """The server's own compression and retention, a drill of its copy, its gauges under its name in /metrics,
    the servers page; then capture stopped and the slot dropped: loud in `server check`, /metrics, the page;
    and a restore refused in one line when its major version is not the local binaries'."""
    from django.contrib.auth.models import User
    from django.test import Client

    from fleet.models import Server
    from tests.test_metrics import samples

    refused = manage("server", "add", "ext", "--host", "127.0.0.1", "--port", str(ext.port), "--user", ext.superuser,
                     "--keep-backups", "-1", check=False)
    assert refused.returncode == 2 and "--keep-backups: -1 is below 0" in refused.stderr
    manage("server", "add", "ext", "--host", "127.0.0.1", "--port", str(ext.port), "--user", ext.superuser,
           "--dbname", ext.dbname, "--replication-user", ext.repl, "--passfile", str(ext.passfile),
           "--compress", "gzip", "--keep-backups", "1")
    assert Server.objects.filter(name="ext", compression="gzip", retention_keep_backups=1).exists()
    manage("fleet", "up", "--server", "ext")
    first = json.loads(manage("backup", "--server", "ext", "--json", timeout=600).stdout)
    assert first["compression"] == "gzip"  # the server's own, not DEFAULT_COMPRESSION (zstd)
    rows = write(ext, "items", 5, "drilled")
    captured(ext)
    second = json.loads(manage("backup", "--server", "ext", "--compress", "none", "--json", timeout=600).stdout)
    assert second["compression"] == "none"
    kept = json.loads(manage("retention", "--server", "ext", "--dry-run", "--json").stdout)
    assert kept["policy"].startswith("keep 1 backup(s)") and kept["deleted_backups"] == [first["label"]]

    drill = manage("drill", "--server", "ext", "--json", timeout=600, check=False)
    job = json.loads(drill.stdout)
    assert drill.returncode == 0 and job["drill_verdict"] == "passed", job
    restore_port = json.loads(manage("server", "list", "--json").stdout)[1]["restore_port"]
    assert restored(restore_port, ext, "items") == {r[0] for r in rows}

    staff = Client()
    staff.force_login(User.objects.create_superuser("admin", "a@example.org", "pw"))
    found = samples(staff.get("/metrics").content.decode(), "ext")
    assert found[("pitr_capture_up", ())] == 1 and found[("pitr_slot_active", ())] == 1
    assert found[("pitr_capture_alert", ())] == 0 and found[("pitr_restore_drill_last_verdict", ())] == 1
    assert ("pitr_slot_retained_bytes", ()) in found
    page = staff.get("/servers/").content.decode()
    assert 'id="alert-ext"' not in page and "ago</td>" in page

    # Another major version than the local binaries': refused in one line, the copy left as it was.
    Server.objects.filter(name="ext").update(pg_major=14)
    refused = manage("restore", "--server", "ext", "--latest", check=False)
    error = refused.stderr.strip().splitlines()[-1]  # after the progress line "planning..."
    assert refused.returncode != 0 and error.startswith("CommandError: failure planning (server ext is "
                                                        "PostgreSQL 14, the local binaries of its restore target "
                                                        "are PostgreSQL 15"), refused.stderr
    assert restored(restore_port, ext, "items") == {r[0] for r in rows}
    Server.objects.filter(name="ext").update(pg_major=15)

    # Capture stopped: the slot is inactive and the server keeps WAL for it.
    manage("fleet", "down", "--server", "ext")
    write(ext, "items", 3, "uncaptured")
    checked = manage("server", "check", "ext", "--json", check=False, env={"PITR_SLOT_RETAINED_WARN_BYTES": "1"})
    assert checked.returncode != 0
    [capture] = [c for c in json.loads(checked.stdout)["checks"] if c["check"] == "capture"]
    assert "slot pitr_ext is inactive" in capture["line"] and "fleet up --server ext" in capture["line"]
    assert "more than PITR_SLOT_RETAINED_WARN_BYTES (1)" in capture["line"]
    found = samples(staff.get("/metrics").content.decode(), "ext")
    assert found[("pitr_slot_active", ())] == 0 and found[("pitr_capture_alert", ())] == 1
    assert found[("pitr_slot_retained_bytes", ())] > 0
    assert "slot pitr_ext is inactive" in staff.get("/servers/").content.decode()

    with ext.connect("postgres") as conn:
        conn.execute("SELECT pg_drop_replication_slot('pitr_ext')")
    text = manage("server", "check", "ext", check=False).stdout
    assert "FAIL capture broken: replication slot pitr_ext is missing on the primary" in text
    assert "`python manage.py fleet up --server ext` makes a new slot" in text
    listed = manage("server", "list").stdout
    assert "ALERT capture broken: replication slot pitr_ext is missing" in listed

    # `fleet up` makes a new slot only while the server still holds the WAL its archive continues from.
    for n in range(4):  # switch and checkpoint: the server recycles WAL that no slot holds (once archived)
        write(ext, "items", 1, f"lost {n}")
        with ext.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    refused = manage("fleet", "up", "--server", "ext", check=False)
    assert refused.returncode != 0 and "replication slot pitr_ext is missing and the primary no longer holds WAL" \
        in refused.stderr and "that WAL is lost" in refused.stderr, refused.stderr
    with ext.connect("postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pitr_ext'").fetchone()
    # The admin's save says the same and keeps the entry (server check and the Servers page show it broken).
    from django.forms.models import model_to_dict

    server = Server.objects.get(name="ext")
    form = {k: ("" if v is None else v) for k, v in model_to_dict(server, fields=admin_form_fields()).items()}
    page = staff.post(f"/admin/fleet/server/{server.pk}/change/", form, follow=True)
    assert page.status_code == 200 and "that WAL is lost" in page.content.decode()
    assert Server.objects.filter(name="ext").exists()


def admin_form_fields() -> tuple[str, ...]:
    from dashboard.admin import ServerForm

    return ServerForm.Meta.fields
