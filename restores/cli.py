"""`restore`'s options and its final words, shared by `manage.py restore` and the web API (dashboard/api.py),
so the two never drift: one parser, one validation, one message."""
from __future__ import annotations

from django.conf import settings

from fleet import servers
from fleet.driver import get_driver
from pitrsite.errors import PitrError
from pitrsite.jobs import ENDED_BADLY, JobState
from restores.models import RestoreJob
from restores.serializers import restore_dict
from restores.targets import RestoreTarget


def arguments(parser) -> None:
    parser.add_argument("--target-time", help="ISO 8601 with a time zone, e.g. 2026-11-27T14:03:27+00:00")
    parser.add_argument("--target-lsn", help="e.g. 0/16B3740")
    parser.add_argument("--target-xid", help="a committed transaction id")
    parser.add_argument("--target-name", help="a restore point made with pg_create_restore_point")
    parser.add_argument("--immediate", action="store_true", help="stop as soon as the backup is consistent")
    parser.add_argument("--latest", action="store_true", help="replay everything captured")
    parser.add_argument("--exclusive", action="store_true", help="stop just before the target (time, LSN, xid)")
    parser.add_argument("--timeline", help="recovery target timeline (default: the newest in the catalog)")
    parser.add_argument("--backup", type=int, help="use this backup id instead of the newest usable one")
    parser.add_argument("--as-new-primary", metavar="NAME",
                        help="disaster recovery: the restored copy becomes server NAME (a new primary, "
                             "captured and backed up); this server is retired, its history kept")
    parser.add_argument("--port", type=int, help="with --as-new-primary: the new primary's port")
    parser.add_argument("--restore-port", type=int, help="with --as-new-primary: its restore target's port")


def request_of(opts: dict) -> tuple[RestoreTarget, dict | None]:
    """Parsed options -> (the target, the --as-new-primary spec or None); PitrError in one line."""
    target = RestoreTarget.from_options(
        time=opts["target_time"], lsn=opts["target_lsn"], xid=opts["target_xid"], name=opts["target_name"],
        immediate=opts["immediate"], latest=opts["latest"], exclusive=opts["exclusive"],
        timeline=opts["timeline"], backup_id=opts["backup"])
    if (opts["port"] or opts["restore_port"]) and not opts["as_new_primary"]:
        raise PitrError("--port and --restore-port go with --as-new-primary NAME")
    promote = None if not opts["as_new_primary"] else {
        "name": opts["as_new_primary"], "port": opts["port"], "restore_port": opts["restore_port"]}
    return target, promote


def outcome(job: RestoreJob) -> tuple[dict, list[str], str | None]:
    """A finished restore as the command ends: (its JSON document, its lines, the one-line error or None).

    A failure's document is {"error", "restore"}, as `--json` prints it."""
    data = restore_dict(job)
    if job.state in ENDED_BADLY:
        error = job.error or f"restore #{job.pk} {job.state}"
        return {"error": error, "restore": data}, [], error
    if job.state != JobState.DONE:
        return data, [], None
    promoted = job.promoted_at.isoformat() if job.promoted_at else None  # a done restore has promoted
    head = f"restore #{job.pk} promoted at {promoted} on timeline {job.final_timeline}; "
    if job.plan.get("new_primary"):
        name, port = job.plan["new_primary"], job.as_new_primary["port"]
        return data, [head + (
            f"recovery ended at {job.final_lsn_text}; it is now server {name}, a primary on "
            f"{settings.PITR_HOST}:{port}, captured through its own slot and backed up as any server "
            f"(--server {name}); server {servers.current().name} is retired, its history kept")], None
    return data, [head + (
        f"recovery ended at {job.final_lsn_text} ({job.plan.get('stop_reason', '')}); "
        f"it listens on {settings.PITR_HOST}:{get_driver().layout.port('restore_target')}")], None
